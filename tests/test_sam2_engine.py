"""The SAM2 few-shot engine behind the engine interface: mechanics on a random tiny model
(never a quality claim), its place in process.py's fallback chain, and the pseudo-label CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import SimpleITK as sitk
import torch
from conftest import run_process
from test_process import summary

from sslmedsam2.engines import RuntimeOptions
from sslmedsam2.engines.sam2 import Sam2Engine, torch_threads
from sslmedsam2.errors import WeightsError
from sslmedsam2.fewshot.checkpoints import resolve_checkpoint
from sslmedsam2.fewshot.tffs import TFFSConfig
from sslmedsam2.supports import find_supports


def test_segments_on_the_query_grid(example_dataset):
    supports = find_supports(example_dataset.train_dir)
    random_tiny = resolve_checkpoint(None, name="tiny", allow_random=True)  # test flag: no file
    engine = Sam2Engine(supports, random_tiny, RuntimeOptions(device="cpu"),
                        TFFSConfig(insertions=1, max_supports=1, support_stride=4),
                        hydra_overrides=["++model.image_size=64"])
    assert engine.can_segment("T1")
    case = example_dataset.split("test")[0]
    query = sitk.ReadImage(str(case.images["T1"]))
    threads = torch.get_num_threads()
    segmentation = engine.segment(query, "T1", vendor=case.vendor)
    assert torch.get_num_threads() == threads  # pinned to CPU_THREADS only while segmenting
    assert segmentation.mask.shape == query.GetSize()[::-1]
    assert segmentation.uncertainty.shape == query.GetSize()[::-1]
    assert "sam2 tiny supports=" in segmentation.detail
    assert segmentation.detail.endswith("checkpoint=none (random weights)")


def test_thread_count_is_scoped():
    threads = torch.get_num_threads()
    with torch_threads(threads + 1):
        assert torch.get_num_threads() == threads + 1
    with torch_threads(None):
        assert torch.get_num_threads() == threads
    assert torch.get_num_threads() == threads


def test_steps_aside_without_checkpoint(tmp_path, example_dataset):
    engine = Sam2Engine.from_weights(tmp_path, RuntimeOptions())
    assert not engine.can_segment("GED4")
    assert f"{tmp_path}/sam2/" in engine.missing("GED4") and "MedSAM2_latest.pt" in engine.missing("GED4")


def test_broken_checkpoint_is_verified_once_and_never_skipped(tmp_path, example_dataset, caplog):
    weights = tmp_path / "weights"
    for support in find_supports(example_dataset.train_dir)[:1]:
        shutil.copytree(support.image.parent, weights / "supports" / support.case)
    (weights / "sam2").mkdir()
    checkpoint = weights / "sam2" / "MedSAM2_latest.pt"
    checkpoint.write_bytes(b"PK\x03\x04" + bytes(4000))  # the start of a zip, cut off
    engine = Sam2Engine.from_weights(weights, RuntimeOptions())
    said = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert said == [f"{checkpoint}: truncated or not a checkpoint: 4,004 bytes, expected "
                    "156,040,129 for MedSAM2_latest.pt (an interrupted download or copy?); copy "
                    "the file again"]
    assert engine.can_segment("T1")  # claims its sequences: no silent fall back to the atlas
    for _ in range(2):
        with pytest.raises(WeightsError) as caught:
            engine.load("T1")
        assert str(caught.value) == said[0]
    out = tmp_path / "out"
    result = run_process("--input", example_dataset.test_input_dir, "--output", out,
                         "--weights", weights)
    assert result.returncode == 1
    assert "MedSAM2_latest.pt: truncated" in result.stderr and "Traceback" not in result.stderr
    assert {c["status"] for c in summary(out)["cases"]} == {"error"}


def test_pseudo_label_sam2_needs_a_checkpoint(tmp_path, example_dataset):
    result = subprocess.run(
        [sys.executable, "-m", "sslmedsam2", "pseudo-label", "--method", "sam2", "--supports",
         str(example_dataset.train_dir), "--unlabelled", str(example_dataset.test_input_dir),
         "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "needs --checkpoint" in result.stderr
