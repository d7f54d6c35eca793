"""Overlay montages: a few axial slices of a volume with mask contours, as one PNG.

Why: a picture shows at a glance whether a pseudo label or a prediction hugs the liver, whether a
mask is shifted or flipped, and whether an image is what its name says; numbers do not.

Matplotlib is used through ``Figure`` + ``FigureCanvasAgg`` only, so pyplot's global state (and
the interactive backend of whoever imports us) is never touched.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

log = logging.getLogger(__name__)

#: Contour colours in dict order; chosen to stay distinct on a grey image.
COLOURS: tuple[str, ...] = ("#ff3b30", "#30d158", "#0a84ff", "#ffd60a", "#bf5af2", "#ff9f0a")
_PANEL_INCHES = 3.0


def save_overlay_montage(image: sitk.Image, masks: Mapping[str, sitk.Image | np.ndarray], path: Path,
                         n_slices: int = 6, title: str | None = None) -> Path:
    """Save ``n_slices`` axial slices of ``image`` with each mask as a coloured contour, as a PNG.

    Slices are spread over the masks' union (the whole volume if every mask is empty). Arrays are
    (z, y, x) on the image's grid; images on another grid are resampled onto it (nearest
    neighbour), so a misplaced mask shows up misplaced instead of failing. Slices are shown in
    radiological convention (patient's right on the left, anterior up) with their true aspect
    ratio. Written atomically; returns ``path``.
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("image must be a 3D scalar volume")
    voxels, mask_arrays, spacing = _oriented(image, masks)
    slices = pick_slices(mask_arrays.values(), voxels.shape[0], n_slices)
    figure = _draw(voxels, mask_arrays, spacing, slices, title)
    return _save_png_atomic(figure, Path(path))


def _mask_on_grid(mask: sitk.Image | np.ndarray, image: sitk.Image, name: str) -> sitk.Image:
    """A uint8 mask image sharing ``image``'s grid."""
    if isinstance(mask, np.ndarray):
        expected = tuple(reversed(image.GetSize()))
        if mask.shape != expected:
            raise ValueError(f"mask {name!r}: shape {mask.shape} does not match the image (z, y, x) "
                             f"{expected}")
        out = sitk.GetImageFromArray((mask > 0).astype(np.uint8))
        out.CopyInformation(image)
        return out
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    same = (binary.GetSize() == image.GetSize()
            and np.allclose(binary.GetSpacing(), image.GetSpacing(), atol=1e-5)
            and np.allclose(binary.GetOrigin(), image.GetOrigin(), atol=1e-4)
            and np.allclose(binary.GetDirection(), image.GetDirection(), atol=1e-5))
    if same:
        binary.CopyInformation(image)  # absorb rounding differences
        return binary
    log.info("mask %r is on another grid than the image; resampling it (nearest neighbour)", name)
    return sitk.Resample(binary, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _oriented(image: sitk.Image, masks: Mapping[str, sitk.Image | np.ndarray]
              ) -> tuple[np.ndarray, dict[str, np.ndarray], tuple[float, float, float]]:
    """Image and masks as (z, y, x) arrays reoriented to LPS: row 0 anterior, column 0 the
    patient's right, which is the radiological display; spacing as (x, y, z)."""
    oriented = sitk.DICOMOrient(image, "LPS")
    voxels = sitk.GetArrayFromImage(oriented).astype(np.float32)
    arrays = {name: sitk.GetArrayFromImage(sitk.DICOMOrient(_mask_on_grid(m, image, name), "LPS"))
              for name, m in masks.items()}
    return voxels, arrays, tuple(oriented.GetSpacing())


def pick_slices(masks: Iterable[np.ndarray], depth: int, n_slices: int) -> list[int]:
    """Up to ``n_slices`` distinct axial indices evenly spread over the masks' union in z."""
    present = np.zeros(depth, dtype=bool)
    for mask in masks:
        present |= np.asarray(mask).reshape(depth, -1).any(axis=1)
    if present.any():
        first, last = np.flatnonzero(present)[[0, -1]]
    else:
        first, last = 0, depth - 1
    count = min(n_slices, last - first + 1)
    # Inset by half a step so the extreme slices (often a few voxels of mask) are not both shown.
    positions = first + (np.arange(count) + 0.5) * (last - first + 1) / count - 0.5
    return sorted({int(round(p)) for p in positions})


def _window(voxels: np.ndarray) -> tuple[float, float]:
    """Display range from the 0.5 / 99.5 percentiles, so a few hot voxels do not wash it out."""
    low, high = np.percentile(voxels, [0.5, 99.5])
    return float(low), float(high if high > low else low + 1.0)


def _draw(voxels: np.ndarray, masks: Mapping[str, np.ndarray], spacing: tuple[float, float, float],
          slices: list[int], title: str | None) -> Figure:
    n_cols = min(math.ceil(math.sqrt(len(slices))), 6)  # 6 slices: 2 rows of 3
    n_rows = -(-len(slices) // n_cols)
    height_ratio = voxels.shape[1] * spacing[1] / (voxels.shape[2] * spacing[0])
    figure = Figure(figsize=(_PANEL_INCHES * n_cols, _PANEL_INCHES * height_ratio * n_rows + 0.9),
                    layout="constrained")
    FigureCanvasAgg(figure)
    vmin, vmax = _window(voxels)
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for ax, z in zip(axes.flat, slices):
        ax.imshow(voxels[z], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest",
                  aspect=spacing[1] / spacing[0])
        for colour, mask in zip(_colours(len(masks)), masks.values()):
            if mask[z].any():
                ax.contour(mask[z], levels=[0.5], colors=[colour], linewidths=1.2)
        ax.set_title(f"slice {z} / {voxels.shape[0] - 1}", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    _legend(figure, list(masks))
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _colours(count: int) -> list[str]:
    return [COLOURS[i % len(COLOURS)] for i in range(count)]


def _legend(figure: Figure, names: list[str]) -> None:
    if not names:
        return
    handles = [Line2D([0], [0], color=c, linewidth=2) for c in _colours(len(names))]
    figure.legend(handles, names, loc="outside lower center", ncol=min(len(names), 4), frameon=False,
                  fontsize=8)


def _save_png_atomic(figure: Figure, path: Path) -> Path:
    """PNG under a hidden temporary name in the target folder, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial.png", dir=path.parent)
    os.close(fd)
    try:
        figure.savefig(tmp, format="png", dpi=100, facecolor="white")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
