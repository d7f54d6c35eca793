"""``sslmedsam2 reproduce`` end to end on a generated dataset laid out exactly like CARE-LiSeg
(training cases named like 1009-A-S4, validation cases like 0007-A with info.csv, masks apart),
the tiny training profile and the atlas standing in for SAM2: mechanics, not the paper's figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from sslmedsam2.datasets.example import ExampleConfig, make_example
from sslmedsam2.io import same_grid

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = REPO / "configs" / "care2025_paper.toml"


@pytest.fixture(scope="module")
def care(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("care")
    example = make_example(ExampleConfig(out_dir=root / "example", cases=6, test_cases=3,
                                         labelled_per_vendor=1, seed=3), progress=False)
    train = root / "LiSeg" / "train"
    for number, case_dir in enumerate(sorted(example.train_dir.glob("Vendor_*/*"))):
        vendor = case_dir.parent.name.removeprefix("Vendor_")
        shutil.copytree(case_dir, train / case_dir.parent.name / f"{1009 + number}-{vendor}-S4")
    val, gt = root / "LiSeg" / "val", root / "LiSeg" / "val_gt"
    shutil.copytree(example.test_input_dir, val)
    shutil.copytree(example.test_ground_truth_dir, gt)
    assert (val / "info.csv").is_file()
    return SimpleNamespace(train=train, val=val, gt=gt)


def reproduce(care: SimpleNamespace, work: Path, *extra: str, train: Path | None = None,
              with_gt: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sslmedsam2", "reproduce", "--config", str(PROTOCOL),
               "--train-root", str(train or care.train), "--val-root", str(care.val),
               "--work", str(work), "--device", "cpu", "-q", *extra]
    if with_gt:
        command += ["--val-gt", str(care.gt)]
    return subprocess.run(command, capture_output=True, text=True, timeout=1200)


def test_reproduce_writes_the_submission_and_the_comparison(care, tmp_path):
    work = tmp_path / "work"
    result = reproduce(care, work, "--engine", "atlas", "--profile", "tiny-test", "--folds", "all",
                       "--max-rounds", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "atlas engine stands in for SAM2" in result.stderr and "NOT the paper's method" in result.stderr
    assert "6 cases [A 2 (1 labelled), B1 2 (1 labelled), B2 2 (1 labelled)]" in result.stderr
    assert "expected cost" in result.stderr and "estimate vs actual" in result.stderr
    for case_dir in sorted(care.val.glob("Vendor_*/*")):
        for sequence in ("GED4", "T1"):
            image = sitk.ReadImage(str(case_dir / f"{sequence}.nii.gz"))
            pred = sitk.ReadImage(str(work / "submission" / "LiSeg_pred" / case_dir.name
                                      / f"{sequence}_pred.nii.gz"))
            assert same_grid(pred, image) and pred.GetPixelID() == sitk.sitkUInt8
    assert sorted(p.name for p in (work / "submission" / "LiSeg_pred").iterdir()) == \
        ["0007-A", "0008-B1", "0009-B2"]
    assert "not the paper's method" in (work / "submission" / "method_description.md").read_text()
    # the table: ours per sequence and vendor beside the paper's figures and the leaderboard's
    for text in ("0.9710 / 20.07", "0.9648 / 21.97", "0.9703 / 21.40", "0.9770 / 14.65"):
        assert text in result.stdout
    record = json.loads((work / "reproduce.json").read_text())
    assert record["stand_in"] == "atlas"
    assert {r["sequence"] for r in record["results"]} == {"GED4", "T1"}
    ged4 = {r["case"]: r for r in record["results"] if r["sequence"] == "GED4"}
    assert sorted(ged4) == ["0007-A", "0008-B1", "0009-B2"]
    # six training iterations make no usable model; what is checked is that the table scores the
    # submitted files against the given masks
    for case, row in ged4.items():
        pred = sitk.GetArrayFromImage(sitk.ReadImage(row["pred_path"])) > 0
        truth = sitk.GetArrayFromImage(sitk.ReadImage(row["gt_path"])) > 0
        assert Path(row["pred_path"]).parent.name == case and case in row["gt_path"]
        expected = 2 * np.sum(pred & truth) / (np.sum(pred) + np.sum(truth))
        assert row["dice"] == pytest.approx(expected, abs=1e-6)
    steps = {s["name"]: s for s in record["steps"]}
    assert set(steps) == {"round 0 pseudo labels", "round 1 (train + predict)", "final model",
                          "validation predictions"}
    assert all(s["estimate_s"] >= 0 and s["actual_s"] is not None for s in steps.values())
    assert steps["round 1 (train + predict)"]["actual_s"] > 0


def test_problems_in_the_data_are_named_and_nothing_starts(care, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(care.train, train)
    no_ged4 = train / "Vendor_A" / "1010-A-S4" / "GED4.nii.gz"
    no_ged4.unlink()
    broken = train / "Vendor_B1" / "1012-B1-S4" / "T1.nii.gz"
    broken.write_bytes(b"not a volume")
    mask_path = next(train.glob("Vendor_B2/*/mask_GED4.nii.gz"))
    mask = sitk.ReadImage(str(mask_path))
    mask.SetOrigin([o + 5.0 for o in mask.GetOrigin()])
    sitk.WriteImage(mask, str(mask_path))
    work = tmp_path / "work"
    result = reproduce(care, work, "--engine", "atlas", train=train)
    assert result.returncode == 1
    assert f"{no_ged4.parent}: no GED4 volume" in result.stderr
    assert f"{broken}: unreadable" in result.stderr
    assert f"{mask_path}: not on the grid of GED4.nii.gz (origin differ)" in result.stderr
    assert "3 problem(s) in the data" in result.stderr and "Traceback" not in result.stderr
    assert not (work / "run").exists()


def test_dry_run_and_the_checkpoint_the_protocol_needs(care, tmp_path):
    work = tmp_path / "work"
    result = reproduce(care, work, "--dry-run", with_gt=False)
    assert result.returncode == 1
    assert "needs pseudo_labels.checkpoint" in result.stderr and "--checkpoint" in result.stderr
    fake = tmp_path / "MedSAM2_latest.pt"
    result = reproduce(care, work, "--dry-run", "--checkpoint", str(tmp_path / "absent.pt"))
    assert result.returncode == 1 and "absent.pt: SAM2 checkpoint not found" in result.stderr
    fake.write_bytes(b"")
    result = reproduce(care, work, "--dry-run", "--checkpoint", str(fake))
    assert result.returncode == 0, result.stderr
    assert "validation ground truth" in result.stderr and "sequences: GED4 3, T1 3" in result.stderr
    assert "round 0 pseudo labels" in result.stderr and "stands in" not in result.stderr
    assert not work.exists()


def test_the_estimate_counts_a_fused_round_zero_partner():
    """With ``fuse_labelled_only`` round 0 also trains nnU-Net on the labelled cases and predicts
    the unlabelled ones: the estimate's round 0 grows by exactly that, the other steps do not."""
    from sslmedsam2.datasets.care_check import RootReport
    from sslmedsam2.ssl.config import load_config
    from sslmedsam2.ssl.reproduce import CPU_COSTS, estimate

    train = RootReport(Path("train"), "training",
                       vendors={f"{n:04d}-A": "A" for n in range(8)}, labelled=["0000-A", "0001-A"])
    val = RootReport(Path("val"), "validation", vendors={"0100-A": "A"})
    overrides = {"data.train": "train", "pseudo_labels.engine": "atlas"}
    alone = estimate(load_config(PROTOCOL, overrides), train, val, CPU_COSTS)
    fused = estimate(load_config(PROTOCOL, {**overrides, "pseudo_labels.fuse_labelled_only": True}),
                     train, val, CPU_COSTS)
    # the paper's schedule on two labelled cases: one fold ("all"), 1000 x 250 iterations
    partner_s = 1000 * 250 * CPU_COSTS.iteration_s + 6 * CPU_COSTS.predict_fold_s
    assert fused[0].estimate_s == pytest.approx(alone[0].estimate_s + partner_s)
    assert [s.estimate_s for s in fused[1:]] == [s.estimate_s for s in alone[1:]]
