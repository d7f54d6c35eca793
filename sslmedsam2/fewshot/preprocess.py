"""Volumes to SAM2 frames, exactly as TFFS-MedSAM2 prepares them, and model outputs back.

The authors' code reads volumes as (z, y, x) and slices along axis 0. Files in the wild do not
always store the axial axis first, so we pick the slicing axis from the direction matrix instead:
the array axis whose physical direction is closest to the patient's superior-inferior axis (LPS z).
For the usual axial acquisition that is array axis 0, so this is the authors' behaviour there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    """The MedSAM-style intensity window and the in-plane resize.

    ``resample="pil"`` is what the authors' loader (and sam2's JPEG loader) does: 8-bit slices
    resized by Pillow's default filter (bicubic, antialiased) to 8 bits. ``"bilinear"`` resizes
    the 8-bit values with ``torch.nn.functional.interpolate`` instead (not the authors' numbers).
    """

    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    resample: Literal["pil", "bilinear"] = "pil"


@dataclass
class Frames:
    """A volume as model input: ``tensor`` is (N, 3, S, S) float32, ImageNet-normalised.

    ``axis`` is the array axis (of the (z, y, x) array) that was sliced; ``size`` the in-plane
    (H, W) of each slice, which is where SAM2 returns its logits.
    """

    tensor: torch.Tensor
    axis: int
    size: tuple[int, int]


def axial_axis(image: sitk.Image) -> int:
    """The array axis (0, 1 or 2 of ``sitk.GetArrayFromImage``) that steps along superior-inferior.

    ITK direction columns give the physical direction of index axes (i, j, k) = (x, y, z); the array
    is indexed (k, j, i), so index axis c is array axis 2 - c. Ties (a 45 degree oblique) go to the
    slowest array axis, the authors' choice.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"axial_axis needs a 3D image, got {image.GetDimension()}D")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    superior = np.abs(direction[2, :])  # z component of each index axis' direction
    # reversed index order is array order; argmax keeps the first of ties: the slowest axis
    return int(np.argmax(superior[::-1]))


def slices_first(array: np.ndarray, axis: int) -> np.ndarray:
    """View of a (z, y, x) array with the slicing axis first; other axes keep their order."""
    return np.moveaxis(array, axis, 0)


def to_volume_order(per_slice: np.ndarray, axis: int) -> np.ndarray:
    """Undo ``slices_first``: (N, H, W) stacked per slice -> the volume's (z, y, x) array order."""
    return np.moveaxis(per_slice, 0, axis)


def window_intensities(
    volume: np.ndarray, config: PreprocessConfig = PreprocessConfig()
) -> np.ndarray:
    """Clip to percentiles of the positive voxels, min-max to 0..255 (float32), zeros stay 0.

    Zero voxels are background padding in MRI exports; leaving them out of the percentiles and
    keeping them black is what the authors do (MedSAM preprocessing, ``image_data > 0``).
    """
    data = np.asarray(volume, dtype=np.float32)
    positive = data[data > 0]
    if positive.size == 0:
        return np.zeros(data.shape, np.float32)
    low, high = np.percentile(positive, [config.lower_percentile, config.upper_percentile])
    clipped = np.clip(data, low, high)
    span = float(clipped.max() - clipped.min())
    scaled = (clipped - clipped.min()) / span * 255.0 if span > 0 else np.zeros_like(clipped)
    scaled[data == 0] = 0
    return scaled.astype(np.float32)


def resize_slices(slices: np.ndarray, image_size: int, resample: str = "pil") -> np.ndarray:
    """(N, H, W) windowed slices (0..255) -> (N, S, S) float32 values 0..255, as the model sees.

    Like the authors' loader: slices already S x S are used as they are (not cast to 8 bits);
    others are cast to uint8 (truncating, as ``astype(np.uint8)``) and resized.
    """
    if slices.shape[1:] == (image_size, image_size):
        return np.asarray(slices, np.float32)
    eight_bit = np.asarray(slices).astype(np.uint8)
    if resample == "pil":
        out = [np.asarray(Image.fromarray(s).resize((image_size, image_size))) for s in eight_bit]
        return np.stack(out).astype(np.float32)
    if resample == "bilinear":
        gray = torch.from_numpy(eight_bit).float()[:, None]
        size = (image_size, image_size)
        return F.interpolate(gray, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
    raise ValueError(f"unknown resample {resample!r}; use 'pil' or 'bilinear'")


def normalise(slices: np.ndarray) -> torch.Tensor:
    """(N, S, S) values 0..255 -> (N, 3, S, S): 3 identical channels, /255, ImageNet mean/std."""
    gray = torch.from_numpy(np.ascontiguousarray(slices, np.float32))[:, None] / 255.0
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[None, :, None, None]
    return ((gray.expand(-1, 3, -1, -1) - mean) / std).contiguous()


def volume_frames(
    image: sitk.Image, image_size: int, config: PreprocessConfig = PreprocessConfig()
) -> Frames:
    """A volume as SAM2 frames along its axial axis (see ``axial_axis``)."""
    axis = axial_axis(image)
    windowed = window_intensities(sitk.GetArrayViewFromImage(image), config)
    slices = slices_first(windowed, axis)
    return Frames(
        tensor=normalise(resize_slices(slices, image_size, config.resample)),
        axis=axis,
        size=(int(slices.shape[1]), int(slices.shape[2])),
    )


def mask_slices(mask: sitk.Image, axis: int, size: tuple[int, int]) -> np.ndarray:
    """A support mask as (N, H, W) bool slices along ``axis``, resized (nearest) to the query's
    in-plane ``size``: the method prompts each support slice at the query's resolution."""
    array = slices_first(sitk.GetArrayFromImage(mask) > 0, axis)
    return resize_masks(array, size)


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) masks -> (N, H, W) bool by nearest-neighbour; unchanged when sizes agree."""
    if tuple(masks.shape[1:]) == tuple(size):
        return np.asarray(masks, bool)
    tensor = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None]
    return (F.interpolate(tensor, size=size, mode="nearest")[:, 0] > 0.5).numpy()
