"""Folder evaluation: pairing rules, per-case errors, CSV, summary table and failures."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sslmedsam2.errors import InputError, LayoutError
from sslmedsam2.evaluation.folders import (
    MISSING_GROUND_TRUTH,
    MISSING_PREDICTION,
    CaseResult,
    evaluate_folders,
    failures,
    summary_table,
    write_csv,
)
from sslmedsam2.evaluation.metrics import compute_metrics, image_diagonal_mm

SHAPE = (12, 30, 28)  # z, y, x
SPACING_XYZ = (0.59, 0.59, 3.5)


def cube(offset: int = 0) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[3:9, 8 + offset:22 + offset, 6:20] = 1
    return mask


def write(path: Path, mask: np.ndarray, spacing=SPACING_XYZ, origin=(10.0, -5.0, 2.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(mask)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture()
def care_folders(tmp_path: Path) -> tuple[Path, Path]:
    """CARE-like: gt/<Vendor>/<case>/mask_<SEQ>.nii.gz and LiSeg_pred/<case>/<SEQ>_pred.nii.gz."""
    gt, pred = tmp_path / "gt", tmp_path / "out" / "LiSeg_pred"
    write(gt / "Vendor_A" / "0001-A" / "mask_GED4.nii.gz", cube())
    write(gt / "Vendor_A" / "0001-A" / "GED4.nii.gz", (cube() * 100 + 7).astype(np.int16))  # image
    write(gt / "Vendor_A" / "0001-A" / "mask_T1.nii.gz", cube())
    write(gt / "Vendor_B1" / "0002-B1" / "mask_GED4.nii.gz", cube())  # no prediction
    write(gt / "Vendor_A" / "0003-A" / "mask_GED4.nii.gz", cube())
    write(pred / "0001-A" / "GED4_pred.nii.gz", cube())  # perfect
    write(pred / "0001-A" / "T1_pred.nii.gz", cube(offset=2))  # shifted by 2 voxels along y
    write(pred / "0003-A" / "GED4_pred.nii.gz", cube(), spacing=(0.6, 0.59, 3.5))  # wrong grid
    write(pred / "0009-A" / "GED4_pred.nii.gz", cube())  # no ground truth
    return pred, gt


def by_key(results: list[CaseResult]) -> dict[tuple[str, str], CaseResult]:
    return {(r.case, r.sequence): r for r in results}


def test_care_layout_pairs_and_scores(care_folders):
    pred, gt = care_folders
    results = by_key(evaluate_folders(pred.parent, gt, progress=False))  # found below out/ too
    assert set(results) == {("0001-A", "GED4"), ("0001-A", "T1"), ("0002-B1", "GED4"),
                            ("0003-A", "GED4"), ("0009-A", "GED4")}
    perfect = results["0001-A", "GED4"]
    assert (perfect.dice, perfect.hd, perfect.hd95, perfect.error) == (1.0, 0.0, 0.0, None)
    shifted = results["0001-A", "T1"]
    expected = compute_metrics(cube(2), cube(), (3.5, 0.59, 0.59))
    assert shifted.dice == expected.dice
    # NIfTI stores the spacing as float32
    assert (shifted.hd, shifted.hd95) == pytest.approx((expected.hd, expected.hd95), rel=1e-6)
    assert shifted.hd == pytest.approx(2 * 0.59)
    assert shifted.pred_path.endswith("T1_pred.nii.gz") and shifted.gt_path.endswith("mask_T1.nii.gz")


def test_missing_prediction_is_scored_as_empty(care_folders):
    pred, gt = care_folders
    missing = by_key(evaluate_folders(pred, gt, progress=False))["0002-B1", "GED4"]
    diagonal = image_diagonal_mm(SHAPE, (3.5, 0.59, 0.59))
    assert missing.dice == 0.0
    assert (missing.hd, missing.hd95) == pytest.approx((diagonal, diagonal))
    assert missing.pred_path is None and missing.error == MISSING_PREDICTION


def test_grid_mismatch_and_orphan_prediction_are_errors_not_crashes(care_folders):
    pred, gt = care_folders
    results = by_key(evaluate_folders(pred, gt, progress=False))
    mismatch = results["0003-A", "GED4"]
    assert mismatch.dice is None and "spacing" in mismatch.error
    assert str(pred / "0003-A" / "GED4_pred.nii.gz") in mismatch.error
    assert str(gt / "Vendor_A" / "0003-A" / "mask_GED4.nii.gz") in mismatch.error
    orphan = results["0009-A", "GED4"]
    assert orphan.dice is None and orphan.gt_path is None and orphan.error == MISSING_GROUND_TRUTH


def test_summary_table_and_failures(care_folders):
    pred, gt = care_folders
    results = evaluate_folders(pred, gt, progress=False)
    table = summary_table(results)
    assert "maximum" in table and "95th percentile" in table
    lines = table.splitlines()
    ged4 = next(line for line in lines if line.startswith("GED4"))
    assert ged4.split()[1] == "2"  # perfect + missing (scored as empty)
    assert "0.5000" in ged4  # mean Dice of 1 and 0
    t1 = next(line for line in lines if line.startswith("T1"))
    assert f"{compute_metrics(cube(2), cube(), (3.5, 0.59, 0.59)).dice:.4f}" in t1 and "1.18" in t1
    assert "1 errors" in lines[-1] and "1 missing" in lines[-1] and "1 predictions without" in lines[-1]
    assert len({len(line) for line in lines[1:4]}) == 1  # header, rule and rows aligned

    plain = failures(results, min_dice=None)
    assert len(plain) == 3 and any("0002-B1/GED4" in m and "missing" in m for m in plain)
    strict = failures(results, min_dice=0.9)
    assert len(strict) == 4 and any(m.startswith("0001-A/T1: Dice") for m in strict)


def test_write_csv_round_trips(care_folders, tmp_path):
    pred, gt = care_folders
    results = evaluate_folders(pred, gt, progress=False)
    path = write_csv(results, tmp_path / "reports" / "metrics.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == len(results)
    assert [p.name for p in path.parent.iterdir()] == ["metrics.csv"]  # no temporary left behind
    t1 = next(r for r in rows if r["case"] == "0001-A" and r["sequence"] == "T1")
    assert float(t1["dice"]) == by_key(results)["0001-A", "T1"].dice
    assert float(t1["hd_mm"]) == pytest.approx(2 * 0.59) and t1["error"] == ""


def test_plain_layout_with_mixed_suffixes_and_empty_masks(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write(gt / "case1.nii.gz", cube())
    write(gt / "case2.mha", np.zeros(SHAPE, dtype=np.uint8))  # constant masks are valid
    write(pred / "case1_pred.nrrd", cube(offset=1))
    write(pred / "case2_pred.nii", np.zeros(SHAPE, dtype=np.uint8))
    write(pred / "notes_not_a_prediction.nii.gz", cube())  # ignored: no _pred suffix
    results = by_key(evaluate_folders(pred, gt, progress=False))
    assert set(results) == {("case1", ""), ("case2", "")}
    assert results["case1", ""].hd == pytest.approx(0.59)
    assert (results["case2", ""].dice, results["case2", ""].hd) == (1.0, 0.0)
    assert failures(results.values(), min_dice=0.5) == []
    assert summary_table(list(results.values())).splitlines()[3].startswith("-")


def test_duplicate_keys_are_a_clear_error(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write(gt / "A" / "0001" / "mask_GED4.nii.gz", cube())
    write(gt / "B" / "0001" / "mask_GED4.nii.gz", cube())
    write(pred / "0001" / "GED4_pred.nii.gz", cube())
    with pytest.raises(InputError, match="same case/sequence"):
        evaluate_folders(pred, gt, progress=False)


def test_empty_or_missing_folders(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    with pytest.raises(LayoutError, match="no ground-truth"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    with pytest.raises(InputError, match="not a folder"):
        evaluate_folders(tmp_path / "nope", tmp_path / "gt", progress=False)


def test_unreadable_prediction_is_an_error_for_that_case(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write(gt / "c" / "mask_T2.nii.gz", cube())
    (pred / "c").mkdir(parents=True)
    (pred / "c" / "T2_pred.nii.gz").write_bytes(b"not a nifti")
    [result] = evaluate_folders(pred, gt, progress=False)
    assert result.dice is None and "cannot be read" in result.error and "T2_pred" in result.error


def test_montages_worst_first_with_images_beside_or_elsewhere(care_folders, tmp_path, capsys):
    """``evaluate --montages``: a picture per scored case, numbered worst Dice first; images found
    beside the ground truth or in --images (CARE input layout); a case without one is named."""
    from sslmedsam2.cli import main

    pred, gt = care_folders
    images = tmp_path / "input"
    write(images / "Vendor_A" / "0001-A" / "T1.nii.gz", (cube() * 50).astype(np.int16))
    write(images / "Vendor_B1" / "0002-B1" / "GED4.nii.gz", (cube() * 80).astype(np.int16))
    out = tmp_path / "pictures"
    command = ["evaluate", "--pred", str(pred), "--gt", str(gt), "-q", "--montages", str(out)]
    assert main([*command, "--images", str(images)]) == 1  # 0003-A's grid and 0009-A's orphan
    names = sorted(p.name for p in out.iterdir())
    assert names == ["001_0002-B1_GED4.png", "002_0001-A_T1.png", "003_0001-A_GED4.png"]
    assert all((out / name).read_bytes().startswith(b"\x89PNG") for name in names)

    capsys.readouterr()
    bare = tmp_path / "bare"
    main([*command[:-1], str(bare)])
    assert sorted(p.name for p in bare.iterdir()) == ["003_0001-A_GED4.png"]  # its image lies beside
    assert "0001-A/T1: no image beside" in capsys.readouterr().err

    worst = tmp_path / "worst"
    main([*command[:-1], str(worst), "--images", str(images), "--worst", "2"])
    assert sorted(p.name for p in worst.iterdir()) == ["001_0002-B1_GED4.png", "002_0001-A_T1.png"]


def test_montages_find_plain_images_by_name(tmp_path):
    from sslmedsam2.evaluation.case_montages import save_case_montages

    gt, pred, images = tmp_path / "gt", tmp_path / "pred", tmp_path / "images"
    write(gt / "liver7.nii.gz", cube())
    write(pred / "liver7_pred.nii.gz", cube(offset=3))
    write(images / "liver7_0000.nii.gz", (cube() * 90).astype(np.int16))
    results = evaluate_folders(pred, gt, progress=False)
    (picture,) = save_case_montages(results, tmp_path / "out", images, progress=False)
    assert picture.name == "001_liver7.png" and picture.stat().st_size > 1000


def test_a_labelled_collection_as_ground_truth(tmp_path, capsys):
    """``--gt`` may be the researcher's own collection: its masks are the ground truth, and a
    prediction named after a case or after its image (what ``infer`` writes) is that case's; its
    images are drawn in the montages without --images."""
    from sslmedsam2.cli import main

    flat, raw, pred = tmp_path / "flat", tmp_path / "raw", tmp_path / "pred"
    for case in ("p01", "p02"):
        write(flat / f"{case}_image.nii.gz", (cube() * 90 + 5).astype(np.int16))
        write(flat / f"{case}_liver.nii.gz", cube())
    write(flat / "p03_image.nii.gz", (cube() * 90).astype(np.int16))  # unlabelled: not scored
    write(pred / "p01_image_pred.nii.gz", cube(offset=2))
    write(pred / "p02_pred.nii.gz", cube())
    results = by_key(evaluate_folders(pred, flat, progress=False))
    assert set(results) == {("p01", ""), ("p02", "")}
    assert results["p02", ""].dice == 1.0 and results["p01", ""].dice < 1.0

    write(raw / "imagesTr" / "liver_001_0000.nii.gz", (cube() * 90).astype(np.int16))
    write(raw / "labelsTr" / "liver_001.nii.gz", cube())
    write(tmp_path / "raw_pred" / "liver_001_0000_pred.nii.gz", cube())
    [result] = evaluate_folders(tmp_path / "raw_pred", raw, progress=False)
    assert (result.case, result.dice, Path(result.gt_path).parent.name) == ("liver_001", 1.0, "labelsTr")

    pictures = tmp_path / "pictures"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(flat), "--montages", str(pictures), "-q"]) == 0
    assert sorted(p.name for p in pictures.iterdir()) == ["001_p01.png", "002_p02.png"]
    assert "no image" not in capsys.readouterr().err


def test_montage_options_without_montages_or_out_of_range_are_usage_errors(care_folders, tmp_path):
    from sslmedsam2.cli import main

    pred, gt = care_folders
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--images", str(tmp_path)]) == 1
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--worst", "3"]) == 1
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--montages", str(tmp_path / "m"),
                 "--worst", "0"]) == 1
    assert not (tmp_path / "m").exists()
