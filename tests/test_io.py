"""Volume reading rejects what a segmenter cannot use; mask writing keeps the grid and nothing else."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import GEOMETRIES, SEED_DIR, reoriented

from sslmedsam2.errors import InputError
from sslmedsam2.io import mask_image, read_volume, same_grid, volume_stem, write_mask


def _write(array: np.ndarray, path, vector: bool = False):
    image = sitk.GetImageFromArray(array, isVector=vector)
    sitk.WriteImage(image, str(path))
    return path


def test_reads_real_mr(real_mr):
    image = read_volume(SEED_DIR / "image.nii.gz")
    assert image.GetSize() == (117, 91, 20)
    assert same_grid(image, real_mr)


@pytest.mark.parametrize("make, problem", [
    (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
    (lambda p: p.write_text("not an image"), "cannot be read"),
    (lambda p: p.write_bytes(gzip.compress((SEED_DIR / "image.nii.gz").read_bytes()[:300])),
     "cannot be read"),
])
def test_unreadable_files_name_the_file(tmp_path, make, problem):
    path = tmp_path / "bad.nii.gz"
    make(path)
    with pytest.raises(InputError) as err:
        read_volume(path)
    assert str(path) in str(err.value) and problem in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_volume(tmp_path):
    data = (SEED_DIR / "image.nii.gz").read_bytes()
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated.nii.gz"):
        read_volume(path)


@pytest.mark.parametrize("array, vector, problem", [
    (np.random.rand(32, 32).astype(np.float32), False, "2D image"),
    (np.random.rand(3, 4, 8, 8).astype(np.float32), False, "4D image"),
    (np.random.rand(4, 8, 8, 3).astype(np.float32), True, "vector image"),
    (np.random.rand(1, 16, 16).astype(np.float32), False, "single-slice"),
    (np.full((4, 8, 8), 7, np.int16), False, "constant"),
])
def test_rejects_non_volumes(tmp_path, array, vector, problem):
    path = _write(array, tmp_path / "odd.mha", vector=vector)
    with pytest.raises(InputError, match=problem):
        read_volume(path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".nii", ".mha"])
def test_rejects_non_finite(tmp_path, value, suffix):
    array = np.random.rand(4, 8, 8).astype(np.float32)
    array[1, 2, 3] = value
    with pytest.raises(InputError, match="1 voxels are NaN or infinite"):
        read_volume(_write(array, tmp_path / f"nan{suffix}"))


def test_rejects_zero_size(tmp_path):
    import nibabel as nib

    path = tmp_path / "zero.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((0, 8, 8), np.int16), np.eye(4)), str(path))
    with pytest.raises(InputError, match="zero.nii.gz"):
        read_volume(path)


@pytest.mark.parametrize("kind", GEOMETRIES)
@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd", ".mhd"])
def test_mask_keeps_exact_grid(tmp_path, real_mr, kind, suffix):
    image = reoriented(real_mr, kind)
    path = write_mask(np.ones(real_mr.GetSize()[::-1], np.uint8), image, tmp_path / f"m{suffix}")
    written = sitk.ReadImage(str(path))
    assert written.GetSize() == image.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), image.GetDirection(), atol=1e-5)
    assert written.GetPixelID() == sitk.sitkUInt8
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name] + ([path.with_suffix(".zraw").name] if suffix == ".mhd" else []))


def test_mask_carries_no_header_metadata(tmp_path, real_mr):
    image = sitk.Image(real_mr)
    image.SetMetaData("PatientName", "Doe^Jane")
    source = tmp_path / "source.mha"
    sitk.WriteImage(image, str(source))
    reread = sitk.ReadImage(str(source))
    assert reread.HasMetaDataKey("PatientName")
    out = sitk.ReadImage(str(write_mask(np.zeros(real_mr.GetSize()[::-1], np.uint8), reread,
                                        tmp_path / "mask.mha")))
    assert not any("Doe" in out.GetMetaData(k) for k in out.GetMetaDataKeys())


def test_mask_shape_mismatch_is_an_error(real_mr):
    with pytest.raises(ValueError, match="does not match"):
        mask_image(np.zeros((3, 3, 3), np.uint8), real_mr)


def test_mask_is_binary(real_mr):
    labels = np.random.randint(0, 4, real_mr.GetSize()[::-1]).astype(np.int16)
    assert set(np.unique(sitk.GetArrayFromImage(mask_image(labels, real_mr)))) <= {0, 1}


def test_volume_stem():
    assert volume_stem("a/GED4.nii.gz") == "GED4"
    assert volume_stem("x.mha") == "x"
