"""Frames exactly as the method doc prepares them, along the axial axis whatever the file says."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from sslmedsam2.fewshot.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    axial_axis,
    mask_slices,
    normalise,
    resize_masks,
    resize_slices,
    slices_first,
    to_volume_order,
    volume_frames,
    window_intensities,
)


def image_with_direction(array: np.ndarray, direction: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetDirection(tuple(np.asarray(direction, float).flatten()))
    return image


def test_window_clips_positive_percentiles_and_keeps_zero():
    rng = np.random.default_rng(0)
    volume = rng.uniform(10, 1000, size=(4, 20, 20)).astype(np.float32)
    volume[:, :5] = 0
    volume[0, 10, 10] = 1e6  # an outlier far above the 99.5th percentile
    low, high = np.percentile(volume[volume > 0], [0.5, 99.5])
    out = window_intensities(volume)
    assert out.dtype == np.float32
    assert (out[:, :5] == 0).all()
    assert out[0, 10, 10] == pytest.approx(255) and out.max() == pytest.approx(255)
    expected = (np.clip(volume, low, high) - low) / (high - low) * 255
    positive = volume > 0
    np.testing.assert_allclose(out[positive], expected[positive], rtol=1e-5, atol=1e-3)
    assert window_intensities(np.zeros((2, 3, 3))).max() == 0


def test_resize_is_pil_bicubic_on_8_bits_like_the_authors_loader():
    rng = np.random.default_rng(1)
    slices = rng.uniform(0, 255, size=(2, 20, 26)).astype(np.float32)
    resized = resize_slices(slices, 32)
    rgb = Image.fromarray(slices[1].astype(np.uint8)).convert("RGB").resize((32, 32))
    assert np.array_equal(resized[1], np.asarray(rgb)[..., 0].astype(np.float32))
    assert resize_slices(slices, 32, "bilinear").shape == (2, 32, 32)
    same = rng.uniform(0, 255, size=(1, 32, 32)).astype(np.float32)
    assert np.array_equal(resize_slices(same, 32), same)  # already model size: kept as floats
    with pytest.raises(ValueError, match="resample"):
        resize_slices(slices, 32, "cubic")


def test_frames_are_three_identical_normalised_channels():
    slices = np.zeros((2, 8, 8), np.float32)
    slices[0] = 255
    frames = normalise(slices)
    assert frames.shape == (2, 3, 8, 8) and frames.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert torch.allclose(frames[0, :, 0, 0], (1 - mean) / std)
    assert torch.allclose(frames[1, :, 0, 0], -mean / std)
    raw = frames * std[None, :, None, None] + mean[None, :, None, None]
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-6)
    assert torch.allclose(raw[:, 0], raw[:, 2], atol=1e-6)


def test_axial_axis_of_identity_flipped_oblique_and_permuted_directions():
    array = np.zeros((6, 7, 8), np.float32)
    assert axial_axis(image_with_direction(array, np.eye(3))) == 0
    assert axial_axis(image_with_direction(array, np.diag([-1.0, -1.0, -1.0]))) == 0
    angle = np.deg2rad(20)
    oblique = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    assert axial_axis(image_with_direction(array, oblique)) == 0
    # coronal storage: index axis j (array axis 1) runs inferior-superior, k runs anterior-posterior
    coronal = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    assert axial_axis(image_with_direction(array, coronal)) == 1
    # sagittal-like: index axis i (array axis 2, fastest) is superior-inferior
    permuted = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    assert axial_axis(image_with_direction(array, permuted)) == 2


def test_volume_frames_slice_along_the_axial_axis_and_back():
    array = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8) + 1
    coronal = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    frames = volume_frames(image_with_direction(array, coronal), image_size=16)
    assert frames.axis == 1 and frames.size == (6, 8) and frames.tensor.shape == (7, 3, 16, 16)
    per_slice = slices_first(array, 1)
    assert np.array_equal(to_volume_order(per_slice, 1), array)


def test_support_masks_are_resized_nearest_to_the_query_plane():
    mask = np.zeros((3, 4, 4), np.uint8)
    mask[1, :2, :2] = 1
    resized = mask_slices(sitk.GetImageFromArray(mask), axis=0, size=(8, 6))
    assert resized.shape == (3, 8, 6) and resized.dtype == bool
    assert resized[1, :4, :3].all() and not resized[1, 4:].any() and not resized[0].any()
    same = resize_masks(mask > 0, (4, 4))
    assert same.dtype == bool and np.array_equal(same, mask > 0)  # sizes agree: unchanged
    doubled = resize_masks(mask > 0, (8, 8))
    assert np.array_equal(doubled, (mask > 0).repeat(2, axis=1).repeat(2, axis=2))


def test_axial_axis_needs_3d():
    with pytest.raises(ValueError, match="3D"):
        axial_axis(sitk.Image(4, 4, sitk.sitkFloat32))
