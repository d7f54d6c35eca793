"""The synthetic CARE-like dataset: layout, labels, geometry, contrast, determinism, validation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from sslmedsam2.datasets.example import ExampleConfig, ExampleDataset, make_example
from sslmedsam2.io import same_grid

# 4 training cases over 3 vendors: vendor A gets two (0001-A labelled, 0004-A not).
SMALL = dict(cases=4, test_cases=1, labelled_per_vendor=1)
TRAIN_IDS = ["0001-A", "0002-B1", "0003-B2", "0004-A"]
LABELLED_IDS = ["0001-A", "0002-B1", "0003-B2"]
TEST_IDS = ["0005-A"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> ExampleDataset:
    return make_example(ExampleConfig(tmp_path_factory.mktemp("example") / "data", **SMALL),
                        progress=False)


def _voxels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _all_voxels(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root)): _voxels(p) for p in sorted(root.rglob("*.nii.gz"))}


def test_layout_and_file_names(dataset: ExampleDataset) -> None:
    root = dataset.root
    expected = {"NOTICE.md", "example.json", "test/input/info.csv"}
    for case in TRAIN_IDS:
        vendor = case.split("-")[1]
        expected |= {f"train/Vendor_{vendor}/{case}/{s}.nii.gz" for s in ("GED4", "T1")}
    for case in LABELLED_IDS:
        expected.add(f"train/Vendor_{case.split('-')[1]}/{case}/mask_GED4.nii.gz")
    for case in TEST_IDS:
        expected |= {f"test/input/Vendor_{case.split('-')[1]}/{case}/{s}.nii.gz" for s in ("GED4", "T1")}
    for split, ids in (("train", TRAIN_IDS), ("test", TEST_IDS)):
        for case in ids:
            expected |= {f"ground_truth/{split}/Vendor_{case.split('-')[1]}/{case}/mask_{s}.nii.gz"
                         for s in ("GED4", "T1")}
    found = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert found == expected  # also: no hidden temporary or marker file is left behind


def test_returned_paths_match_files(dataset: ExampleDataset) -> None:
    assert [c.case_id for c in dataset.split("train")] == TRAIN_IDS
    assert [c.case_id for c in dataset.split("test")] == TEST_IDS
    for case in dataset.cases:
        assert all(p.is_file() for p in [*case.images.values(), *case.ground_truth.values()])
        assert (case.train_mask is not None) == case.labelled
    assert dataset.info_csv.is_file() and dataset.manifest.is_file() and dataset.notice.is_file()


def test_only_first_cases_per_vendor_are_labelled(dataset: ExampleDataset) -> None:
    labelled = [c.case_id for c in dataset.cases if c.labelled]
    assert labelled == LABELLED_IDS
    for case in dataset.split("train"):
        assert (case.images["GED4"].parent / "mask_GED4.nii.gz").exists() == case.labelled
        assert not (case.images["GED4"].parent / "mask_T1.nii.gz").exists()
    for case in dataset.split("test"):
        assert not list(case.images["GED4"].parent.glob("mask_*"))


def test_training_mask_equals_ground_truth(dataset: ExampleDataset) -> None:
    for case in dataset.cases:
        if case.train_mask is not None:
            assert np.array_equal(_voxels(case.train_mask), _voxels(case.ground_truth["GED4"]))


def test_info_csv(dataset: ExampleDataset) -> None:
    with dataset.info_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["Case", "Vendor", "Missing Modality"]
    assert [(r["Case"], r["Vendor"]) for r in rows] == [("0005-A", "A")]
    missing = rows[0]["Missing Modality"].split(";")
    assert "GED4" not in missing and "T1" not in missing and "T2" in missing


def test_masks_on_their_image_grid_and_non_empty(dataset: ExampleDataset) -> None:
    for case in dataset.cases:
        for sequence, mask_path in case.ground_truth.items():
            image = sitk.ReadImage(str(case.images[sequence]))
            mask = sitk.ReadImage(str(mask_path))
            assert same_grid(image, mask), (case.case_id, sequence)
            assert image.GetSize() == mask.GetSize()
            assert mask.GetPixelID() == sitk.sitkUInt8
            values = sitk.GetArrayViewFromImage(mask)
            assert set(np.unique(values)) == {0, 1}
            assert values.sum() > 1000  # a non-trivial liver, not a few stray voxels


def test_images_are_non_negative_int16(dataset: ExampleDataset) -> None:
    for case in dataset.cases:
        for path in case.images.values():
            image = sitk.ReadImage(str(path))
            assert image.GetPixelID() == sitk.sitkInt16
            voxels = sitk.GetArrayViewFromImage(image)
            assert voxels.min() >= 0 and voxels.max() > 100


def test_t1_is_not_on_the_ged4_grid(dataset: ExampleDataset) -> None:
    for case in dataset.cases:
        ged4 = sitk.ReadImage(str(case.images["GED4"]))
        t1 = sitk.ReadImage(str(case.images["T1"]))
        assert ged4.GetSize() != t1.GetSize()
        assert t1.GetSpacing()[0] > ged4.GetSpacing()[0]  # T1 is coarser
        assert not np.allclose(ged4.GetOrigin(), t1.GetOrigin())


def test_vendors_have_their_own_grids(dataset: ExampleDataset) -> None:
    spacing = {c.vendor: sitk.ReadImage(str(c.images["GED4"])).GetSpacing() for c in dataset.cases}
    assert spacing["A"][2] == pytest.approx(3.5) and spacing["B1"][2] == pytest.approx(3.0)
    assert spacing["B2"][2] == pytest.approx(2.5)
    assert spacing["A"][0] < spacing["B1"][0] < spacing["B2"][0]


def _liver_to_surroundings(image_path: Path, mask_path: Path) -> float:
    image, liver = _voxels(image_path).astype(float), _voxels(mask_path).astype(bool)
    ring = ndimage.binary_dilation(liver, np.ones((1, 7, 7), bool)) & ~liver
    return float(image[liver].mean() / image[ring].mean())


def test_ged4_liver_brighter_than_surroundings_t1_less_so(dataset: ExampleDataset) -> None:
    for case in dataset.cases:
        ged4 = _liver_to_surroundings(case.images["GED4"], case.ground_truth["GED4"])
        t1 = _liver_to_surroundings(case.images["T1"], case.ground_truth["T1"])
        assert ged4 > 1.5, case.case_id
        assert t1 < ged4, case.case_id


def test_manifest_and_notice(dataset: ExampleDataset) -> None:
    manifest = json.loads(dataset.manifest.read_text())
    assert manifest["config"]["cases"] == 4 and manifest["config"]["vendors"] == ["A", "B1", "B2"]
    by_case = {c["case"]: c for c in manifest["cases"]}
    assert list(by_case) == TRAIN_IDS + TEST_IDS
    assert by_case["0004-A"]["labelled"] is False and by_case["0005-A"]["split"] == "test"
    ged4 = sitk.ReadImage(str(dataset.cases[0].images["GED4"]))
    assert by_case["0001-A"]["grids"]["GED4"]["size"] == list(ged4.GetSize())
    notice = dataset.notice.read_text()
    assert "Apache" in notice and "TotalSegmentator" in notice


def _tiny(out: Path, seed: int = 0) -> ExampleConfig:
    return ExampleConfig(out, cases=1, test_cases=1, labelled_per_vendor=1, seed=seed, vendors=("A",))


def test_same_seed_same_voxels_other_seed_other_voxels(tmp_path: Path,
                                                        dataset: ExampleDataset) -> None:
    first = _all_voxels(make_example(_tiny(tmp_path / "a"), progress=False).root)
    again = _all_voxels(make_example(_tiny(tmp_path / "b"), progress=False).root)
    other = _all_voxels(make_example(_tiny(tmp_path / "c", seed=1), progress=False).root)
    assert first.keys() == again.keys() == other.keys()
    assert all(np.array_equal(first[k], again[k]) for k in first)
    images = [k for k in first if not Path(k).name.startswith("mask_")]
    assert not any(first[k].shape == other[k].shape and np.array_equal(first[k], other[k])
                   for k in images)
    # A case depends only on (seed, case index), not on how many cases surround it.
    ged4 = "train/Vendor_A/0001-A/GED4.nii.gz"
    assert np.array_equal(first[ged4], _voxels(dataset.root / ged4))


def test_rerun_replaces_previous_example(tmp_path: Path) -> None:
    out = tmp_path / "data"
    make_example(ExampleConfig(out, cases=2, test_cases=1, labelled_per_vendor=1, vendors=("A",)),
                 progress=False)
    make_example(_tiny(out), progress=False)
    assert not (out / "train" / "Vendor_A" / "0002-A").exists()  # stale case removed
    assert (out / "test" / "input" / "Vendor_A" / "0002-A" / "GED4.nii.gz").is_file()


def test_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        make_example(_tiny(tmp_path), progress=False)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(cases=2), "must be >= the number of vendors"),
    (dict(labelled_per_vendor=0), "labelled_per_vendor=0 must be >= 1"),
    (dict(cases=3, labelled_per_vendor=2), "exceeds the 1 training case"),
    (dict(test_cases=-1), "test_cases=-1"),
    (dict(seed=-3), "seed=-3"),
    (dict(vendors=()), "at least one vendor"),
    (dict(vendors=("A", "A")), "unique"),
    (dict(vendors=("A", "Z")), "unknown vendor"),
    (dict(cases=3.5), "must be an integer"),
    (dict(cases=9000, test_cases=1000), "9999"),
    (dict(variability=0.0), "variability=0.0 must lie in"),
    (dict(variability=5.0), "variability=5.0 must lie in"),
])
def test_config_validation(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExampleConfig(tmp_path, **overrides)


def test_config_accepts_str_path(tmp_path: Path) -> None:
    assert ExampleConfig(str(tmp_path)).out_dir == tmp_path  # type: ignore[arg-type]


def test_variability_widens_the_anatomy(tmp_path: Path) -> None:
    """Larger variability: liver volumes spread further around the seed's (same seed, same
    cases, only the deformation and pose ranges scaled)."""
    def liver_volumes(variability: float) -> np.ndarray:
        data = make_example(ExampleConfig(tmp_path / str(variability), cases=6, test_cases=0,
                                          labelled_per_vendor=1, vendors=("A",),
                                          variability=variability), progress=False)
        manifest = json.loads((data.root / "example.json").read_text())
        assert manifest["config"]["variability"] == variability
        return np.array([c["grids"]["GED4"]["liver_ml"] for c in manifest["cases"]])

    assert liver_volumes(3.0).std() > 1.5 * liver_volumes(1.0).std()
