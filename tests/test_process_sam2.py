"""process.py where the SAM2 few-shot engine serves GED4: no nnU-Net in the weights folder, a
SAM2 checkpoint file and one support case. The checkpoint holds a randomly initialised tiny model
named MedSAM2_latest.pt, so the real 512 px path runs (mechanics only, never a quality claim); the
volumes are cut to a few slices so that CPU-practical few-shot stays cheap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import run_process
from test_process import assert_on_grid, summary

from sslmedsam2.fewshot.checkpoints import build_predictor, resolve_checkpoint


def liver_slices(image: sitk.Image, mask: sitk.Image, count: int) -> tuple[sitk.Image, sitk.Image]:
    """``count`` consecutive axial slices around the largest liver cross-section."""
    area = sitk.GetArrayViewFromImage(mask).reshape(mask.GetSize()[2], -1).sum(axis=1)
    start = int(np.clip(np.argmax(area) - count // 2, 0, len(area) - count))
    return image[:, :, start : start + count], mask[:, :, start : start + count]


@pytest.fixture(scope="module")
def sam2_weights(tmp_path_factory, example_dataset) -> Path:
    """weights/sam2/MedSAM2_latest.pt (random tiny SAM2.1 at 512) + one 4-slice support."""
    weights = tmp_path_factory.mktemp("sam2-weights")
    torch.manual_seed(0)
    model = build_predictor(resolve_checkpoint(None, name="medsam2", allow_random=True))
    (weights / "sam2").mkdir()
    torch.save({"model": model.state_dict()}, weights / "sam2" / "MedSAM2_latest.pt")
    case = sorted(example_dataset.train_dir.glob("Vendor_A/*"))[0]
    image, mask = liver_slices(sitk.ReadImage(str(case / "GED4.nii.gz")),
                               sitk.ReadImage(str(case / "mask_GED4.nii.gz")), 4)
    (weights / "supports" / case.name).mkdir(parents=True)
    sitk.WriteImage(image, str(weights / "supports" / case.name / "GED4.nii.gz"))
    sitk.WriteImage(mask, str(weights / "supports" / case.name / "mask_GED4.nii.gz"))
    return weights


@pytest.fixture()
def sam2_input(tmp_path, example_dataset) -> tuple[Path, sitk.Image]:
    """A CARE input folder holding one 3-slice GED4 query."""
    case = sorted(example_dataset.test_input_dir.glob("Vendor_A/*"))[0]
    truth = example_dataset.test_ground_truth_dir / "Vendor_A" / case.name / "mask_GED4.nii.gz"
    query, _ = liver_slices(sitk.ReadImage(str(case / "GED4.nii.gz")),
                            sitk.ReadImage(str(truth)), 3)
    query_path = tmp_path / "input" / "Vendor_A" / case.name / "GED4.nii.gz"
    query_path.parent.mkdir(parents=True)
    sitk.WriteImage(query, str(query_path))
    return tmp_path / "input", query


def test_sam2_serves_ged4_on_the_input_grid(tmp_path, sam2_input, sam2_weights):
    out = tmp_path / "output"
    result = run_process("--input", sam2_input[0], "--output", out, "--weights", sam2_weights,
                         "--device", "cpu", "--time-budget", "0")
    assert result.returncode == 0, result.stderr
    [record] = summary(out)["cases"]
    assert record["status"] == "ok" and record["engine"] == "sam2"
    assert "est=" not in record["message"]  # --time-budget 0: no budget, no probe
    assert_on_grid(Path(record["output"]), sam2_input[1])
    assert "propagate in video" not in result.stderr  # sam2's progress bars are silenced


@pytest.mark.parametrize("engines, budget, served_by, said", [
    ("sam2,atlas", "100000", "sam2", None),             # fits: the configured setting
    ("sam2,atlas", "0.001", "atlas", "atlas serves this case instead"),
    ("sam2", "0.001", "sam2", "still over budget"),      # nothing after it: its cheapest plan
])
def test_sam2_within_the_time_budget(tmp_path, sam2_input, sam2_weights, engines, budget,
                                     served_by, said):
    out = tmp_path / "output"
    result = run_process("--input", sam2_input[0], "--output", out, "--weights", sam2_weights,
                         "--device", "cpu", "--engines", engines, "--time-budget", budget)
    assert result.returncode == 0, result.stderr
    report = summary(out)
    [record] = report["cases"]
    assert record["status"] == "ok" and record["engine"] == served_by
    assert_on_grid(Path(record["output"]), sam2_input[1])
    assert "per tracked slice" in result.stderr  # the probe ran and was logged
    budget_warnings = [w for w in report["warnings"] if "time budget" in w]
    if said is None:
        assert not budget_warnings and "est=" in record["message"]
        assert "insertions=2" in record["message"]  # CPU-practical setting kept whole
    else:
        assert any(said in w for w in budget_warnings) and said in result.stderr
    if served_by == "sam2" and said:
        assert "insertions=1" in record["message"] and "[time budget:" in record["message"]
