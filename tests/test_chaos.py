"""``convert-chaos``: CHAOS MR's DICOM series and label PNGs as a flat NIfTI collection.

The real download cannot be used here (CC BY-NC-SA, not on this machine), so each test writes a
DICOM series in its layout with SimpleITK: instance numbers running against the slices' geometric
order, label PNGs with the liver's grey beside a kidney's, so a slice stacked in the wrong order
or a kidney taken for liver fails the comparison.
"""

from __future__ import annotations

import locale
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from sslmedsam2.cli import CHAOS_SEQUENCES, main
from sslmedsam2.datasets import read_collection, require_clean
from sslmedsam2.datasets.chaos import SEQUENCES, find_patients
from sslmedsam2.datasets.fewshot_grid import FewShotGrid
from sslmedsam2.io import same_grid

SHAPE = (6, 24, 20)  # slices, rows, columns
SPACING = (1.5, 1.4, 6.0)
ORIGIN = (-12.0, 30.0, 55.0)


@contextmanager
def _locale_kept() -> Iterator[None]:
    """GDCM's DICOM writer leaves the process in the C locale; later tests that decode a
    subprocess's output by the locale would then read UTF-8 as ASCII."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_series(folder: Path, volume: np.ndarray, labels: np.ndarray, ground: Path,
                  png_names_match: bool = True) -> None:
    """One file per slice, named in reverse geometric order (IMG-0001-00001 is the top slice)."""
    folder.mkdir(parents=True)
    ground.mkdir(parents=True, exist_ok=True)
    depth = volume.shape[0]
    for z in range(depth):
        number = depth - z
        image = sitk.GetImageFromArray(volume[z:z + 1])
        image.SetSpacing(SPACING)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        tags = {"0008|0060": "MR", "0020|0013": str(number),
                "0020|000e": f"1.2.826.0.1.3680043.2.1125.1.{number}",  # as in CHAOS: one per file
                "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": f"{SPACING[1]}\\{SPACING[0]}",
                "0018|0050": str(SPACING[2]),
                "0020|0032": "\\".join(str(v) for v in (ORIGIN[0], ORIGIN[1], ORIGIN[2] + z * SPACING[2]))}
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IMG-0001-{number:05d}.dcm"))
        with _locale_kept():
            writer.Execute(image)
        png = f"IMG-0001-{number:05d}" if png_names_match else f"liver_{number:03d}"
        sitk.WriteImage(sitk.GetImageFromArray(labels[z].astype(np.uint8)), str(ground / f"{png}.png"))


def _patient(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A volume, its label map (liver 63, a kidney 126) and the liver alone, slice by slice."""
    rng = np.random.default_rng(seed)
    volume = rng.integers(0, 800, SHAPE).astype(np.int16)
    labels = np.zeros(SHAPE, np.uint8)
    for z in range(SHAPE[0]):
        labels[z, 2:6 + 2 * z, 3:10] = 63  # grows slice by slice: the order shows
    labels[1:4, 15:20, 12:18] = 126
    return volume, labels, labels == 63


def test_convert_chaos_places_each_label_on_its_slice(tmp_path, capsys):
    root = tmp_path / "Train_Sets" / "MR"
    expected = {}
    for pid, names_match in (("1", True), ("10", False)):
        volume, labels, liver = _patient(int(pid))
        _write_series(root / pid / "T2SPIR" / "DICOM_anon", volume, labels, root / pid / "T2SPIR" / "Ground",
                      png_names_match=names_match)
        expected[f"chaos_t2spir_{pid}"] = (volume, liver)
    (root / "3" / "T2SPIR" / "DICOM_anon").mkdir(parents=True)  # a patient without a series
    out = tmp_path / "nifti"
    encoding = locale.getpreferredencoding(False)

    assert main(["convert-chaos", "--chaos", str(tmp_path), "--out", str(out), "-q"]) == 1
    assert "chaos_t2spir_3: " in (err := capsys.readouterr().err) and "DICOM_anon: no DICOM files" in err
    collection = require_clean(read_collection(out, "T2SPIR"))
    assert [case.case for case in collection.labelled] == ["chaos_t2spir_1", "chaos_t2spir_10"]
    for case in collection.labelled:
        volume, liver = expected[case.case]
        image, mask = sitk.ReadImage(str(case.image)), sitk.ReadImage(str(case.mask))
        assert np.array_equal(sitk.GetArrayFromImage(image), volume)
        assert np.array_equal(sitk.GetArrayFromImage(mask), liver.astype(np.uint8))
        assert np.allclose(image.GetSpacing(), SPACING) and np.allclose(image.GetOrigin(), ORIGIN)
        assert mask.GetSpacing() == image.GetSpacing() and mask.GetOrigin() == image.GetOrigin()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial file left
    assert locale.getpreferredencoding(False) == encoding  # reading DICOM keeps the process's locale

    written = (out / "chaos_t2spir_1_image.nii.gz").stat().st_mtime_ns
    main(["convert-chaos", "--chaos", str(root / "1"), "--out", str(out), "-q"])  # one patient, done
    assert (out / "chaos_t2spir_1_image.nii.gz").stat().st_mtime_ns == written


def test_convert_chaos_names_a_label_count_that_does_not_match(tmp_path, capsys):
    volume, labels, _ = _patient(5)
    patient = tmp_path / "5"
    series = patient / "T1DUAL" / "DICOM_anon" / "InPhase"
    _write_series(series, volume, labels, patient / "T1DUAL" / "Ground")
    next((patient / "T1DUAL" / "Ground").iterdir()).unlink()
    assert [p.case for p in find_patients(tmp_path, "T1DUAL-in")] == ["chaos_t1dual_in_5"]
    assert find_patients(tmp_path, "T2SPIR") == []
    assert main(["convert-chaos", "--chaos", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--sequence", "T1DUAL-in", "-q"]) == 1
    assert "Ground: 5 label PNGs for 6 DICOM slices" in capsys.readouterr().err
    assert main(["convert-chaos", "--chaos", str(tmp_path), "--out", str(tmp_path / "o"), "-q"]) == 1


def test_cli_offers_every_chaos_sequence():
    assert CHAOS_SEQUENCES == tuple(SEQUENCES)


def test_convert_chaos_onto_the_few_shot_grid(tmp_path):
    """``--grid few-shot``: image and mask together on 1.25 x 1.25 x 7.7 mm, 256 x 256, the
    brightest 0.5% clipped, and the liver where it was in the body."""
    volume, labels, liver = _patient(2)
    series = tmp_path / "2" / "T2SPIR"
    _write_series(series / "DICOM_anon", volume, labels, series / "Ground")
    out = tmp_path / "grid"
    assert main(["convert-chaos", "--chaos", str(tmp_path), "--out", str(out), "--grid", "few-shot",
                 "-q"]) == 0
    image = sitk.ReadImage(str(out / "chaos_t2spir_2_image.nii.gz"))
    mask = sitk.ReadImage(str(out / "chaos_t2spir_2_liver.nii.gz"))
    assert image.GetSize() == (256, 256, 5) and np.allclose(image.GetSpacing(), (1.25, 1.25, 7.7))
    assert same_grid(mask, image) and image.GetPixelID() == sitk.sitkInt16
    assert sitk.GetArrayFromImage(image).max() <= np.percentile(volume, 99.5)
    native = sitk.GetImageFromArray(liver.astype(np.uint8))
    native.SetSpacing(SPACING)
    native.SetOrigin(ORIGIN)
    assert np.allclose(_centroid(mask), _centroid(native), atol=2.0)


def test_few_shot_grid_keeps_an_oblique_flipped_volume_in_place():
    """The grid takes the image's direction and centre, so a mask drawn anywhere stays on the
    same anatomy, whatever the orientation and voxel shape."""
    shape = (9, 40, 30)  # z, y, x
    liver = np.zeros(shape, np.uint8)
    liver[2:6, 8:20, 5:14] = 1
    angle = np.deg2rad(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    direction = (rotation @ np.diag([-1.0, 1.0, -1.0])).ravel().tolist()
    image, mask = (sitk.GetImageFromArray(array) for array in (liver.astype(np.int16) * 300 + 20, liver))
    for volume in (image, mask):
        volume.SetSpacing((0.9, 1.7, 5.0))
        volume.SetOrigin((40.0, -25.0, 120.0))
        volume.SetDirection(direction)
    grid = FewShotGrid(in_plane=(64, 64))
    gridded_image, gridded_mask = grid.apply(image, mask)
    assert same_grid(gridded_mask, gridded_image) and gridded_image.GetDirection() == image.GetDirection()
    assert gridded_image.GetSize() == (64, 64, 6)
    centre = gridded_image.TransformContinuousIndexToPhysicalPoint([31.5, 31.5, 2.5])
    assert np.allclose(centre, image.TransformContinuousIndexToPhysicalPoint([14.5, 19.5, 4.0]))
    assert np.allclose(_centroid(gridded_mask), _centroid(mask), atol=2.5)


def _centroid(mask: sitk.Image) -> np.ndarray:
    """The mask's centre of mass in physical millimetres."""
    index = np.argwhere(sitk.GetArrayFromImage(mask) > 0)[:, ::-1].mean(axis=0)
    return np.array(mask.TransformContinuousIndexToPhysicalPoint(index.tolist()))
