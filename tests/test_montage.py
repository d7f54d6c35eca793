"""Overlay montages: valid PNGs, empty masks, arrays and flipped grids."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import SimpleITK as sitk

from sslmedsam2.evaluation.montage import pick_slices, save_overlay_montage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def seed() -> tuple[sitk.Image, sitk.Image]:
    folder = resources.files("sslmedsam2") / "data" / "abdomen-mr"
    with resources.as_file(folder) as path:
        return sitk.ReadImage(str(path / "image.nii.gz")), sitk.ReadImage(str(path / "liver.nii.gz"))


def _check_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert not list(path.parent.glob(".*"))  # no temporary file left
    return pixels


def test_writes_png_with_two_masks(tmp_path: Path, seed: tuple[sitk.Image, sitk.Image]) -> None:
    image, liver = seed
    shifted = np.roll(sitk.GetArrayFromImage(liver), 3, axis=2)  # array on the image's grid
    out = save_overlay_montage(image, {"ground truth": liver, "prediction": shifted},
                               tmp_path / "sub" / "montage.png", title="seed")
    assert out == tmp_path / "sub" / "montage.png"
    pixels = _check_png(out)
    assert pixels.shape[1] > pixels.shape[0]  # 6 slices in 2 rows of 3


def test_empty_masks_and_no_masks(tmp_path: Path, seed: tuple[sitk.Image, sitk.Image]) -> None:
    image, liver = seed
    empty = np.zeros(sitk.GetArrayViewFromImage(liver).shape, dtype=np.uint8)
    _check_png(save_overlay_montage(image, {"prediction": empty}, tmp_path / "empty.png"))
    _check_png(save_overlay_montage(image, {}, tmp_path / "none.png", n_slices=2))


def test_flipped_and_other_grid_masks(tmp_path: Path, seed: tuple[sitk.Image, sitk.Image]) -> None:
    image, liver = seed
    flipped = sitk.Flip(image, [True, True, False])  # same voxels in space, direction diag(-1,-1,1)
    flipped_liver = sitk.Flip(liver, [True, True, False])
    # The unflipped mask is on another grid: resampled onto the image's, not an error.
    _check_png(save_overlay_montage(flipped, {"flipped": flipped_liver, "original": liver},
                                    tmp_path / "flipped.png", n_slices=4))


def test_more_slices_than_the_volume_has(tmp_path: Path, seed: tuple[sitk.Image, sitk.Image]) -> None:
    image, liver = seed
    _check_png(save_overlay_montage(image, {"liver": liver}, tmp_path / "many.png", n_slices=50))


def test_rejects_bad_input(tmp_path: Path, seed: tuple[sitk.Image, sitk.Image]) -> None:
    image, _ = seed
    with pytest.raises(ValueError, match="does not match"):
        save_overlay_montage(image, {"bad": np.zeros((2, 3, 4))}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="n_slices"):
        save_overlay_montage(image, {}, tmp_path / "bad.png", n_slices=0)
    assert not (tmp_path / "bad.png").exists()


def test_pick_slices_spreads_over_the_masks() -> None:
    mask = np.zeros((40, 4, 4), dtype=np.uint8)
    mask[10:21, 1, 1] = 1
    picked = pick_slices([mask], 40, 6)
    assert len(picked) == 6 and picked == sorted(picked)
    assert 10 <= picked[0] and picked[-1] <= 20
    assert pick_slices([np.zeros_like(mask)], 40, 3) == [6, 20, 33]  # whole volume
    assert pick_slices([mask], 40, 100) == list(range(10, 21))
