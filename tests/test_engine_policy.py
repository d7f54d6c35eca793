"""How the nnU-Net engine picks configuration, folds and TTA, and the shared mask clean-up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sslmedsam2.engines import RuntimeOptions
from sslmedsam2.engines.nnunet import ModelFolder, choose_model, discover_models
from sslmedsam2.errors import WeightsError
from sslmedsam2.postprocess import largest_component
from sslmedsam2.runtime import precision_for

FULL = ModelFolder(Path("w/nnunet/GED4/nnUNetTrainer__nnUNetPlans__3d_fullres"), "3d_fullres",
                   ("0", "1", "2", "3", "4"))
TWO_D = ModelFolder(Path("w/nnunet/GED4/nnUNetTrainer__nnUNetPlans__2d"), "2d", ("0", "1"))


def test_gpu_runs_the_paper_ensemble():
    choice = choose_model([TWO_D, FULL], RuntimeOptions(), on_gpu=True)
    assert (choice.model, choice.folds, choice.tta) == (FULL, FULL.folds, True)
    assert choice.reason == ""


def test_cpu_defaults_are_cheap_and_explained():
    choice = choose_model([TWO_D, FULL], RuntimeOptions(), on_gpu=False)
    assert (choice.model, choice.folds, choice.tta) == (TWO_D, ("0",), False)
    assert "1 of 2 folds" in choice.reason and "TTA off" in choice.reason and "2d" in choice.reason
    only_full = choose_model([FULL], RuntimeOptions(), on_gpu=False)
    assert only_full.model == FULL and only_full.folds == ("0",)
    with_all = ModelFolder(FULL.path, "3d_fullres", ("0", "1", "all"))
    assert choose_model([with_all], RuntimeOptions(), on_gpu=False).folds == ("all",)


@pytest.mark.parametrize("device, bf16, precision", [
    ("cuda", True, "bf16"),   # Ampere, Hopper
    ("cuda", False, "fp16"),  # the T4 (Grand Challenge's default card) has no bf16
    ("cpu", True, "fp32"),    # CPU autocast is slow and changes the numbers
    ("cpu", False, "fp32"),
])
def test_precision_follows_the_device(device, bf16, precision):
    assert precision_for(device, bf16) == precision


def test_explicit_options_win():
    options = RuntimeOptions(tta=True, folds=("1", "3"), configuration="3d_fullres")
    choice = choose_model([TWO_D, FULL], options, on_gpu=False)
    assert (choice.model, choice.folds, choice.tta) == (FULL, ("1", "3"), True)
    assert choose_model([FULL], RuntimeOptions(tta=False), on_gpu=True).tta is False


def test_unavailable_choices_are_errors():
    with pytest.raises(WeightsError, match="no fold"):
        choose_model([FULL], RuntimeOptions(folds=("7",)), on_gpu=True)
    with pytest.raises(WeightsError, match="no '3d_lowres' model"):
        choose_model([FULL], RuntimeOptions(configuration="3d_lowres"), on_gpu=True)


def test_discovery_needs_finished_folds(tmp_path):
    model = tmp_path / "nnunet" / "GED4" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_1").mkdir()
    (model / "fold_1" / "checkpoint_final.pth").write_bytes(b"x")
    (model / "fold_0" / "checkpoint_best.pth").write_bytes(b"x")
    (tmp_path / "nnunet" / "GED4" / "not-a-model").mkdir()
    found = discover_models(tmp_path, "GED4")
    assert [(m.configuration, m.folds) for m in found] == [("3d_fullres", ("1",))]
    assert discover_models(tmp_path, "T2") == []


def test_largest_component_keeps_the_organ():
    mask = np.zeros((10, 20, 20), np.uint8)
    mask[2:8, 2:12, 2:12] = 1      # the organ
    mask[5, 17, 17] = 1            # an island
    mask[0, 0, 0] = 1              # another
    kept = largest_component(mask)
    assert kept.sum() == 6 * 10 * 10 and kept[5, 17, 17] == 0
    diagonal = np.zeros((3, 3, 3), np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = 1   # 26-connected: one component
    assert largest_component(diagonal).sum() == 2
    assert largest_component(np.zeros((2, 2, 2), np.uint8)).sum() == 0


def test_largest_component_ties_do_not_depend_on_array_order():
    """Two equally large islands: keeping the first one found would keep a different voxel set
    once the array is stored flipped (a barely trained model's masks are such islands)."""
    mask = np.zeros((6, 8, 8), np.uint8)
    mask[1, 1, 1:3] = 1
    mask[4, 6, 5:7] = 1
    mask[2, 4, 4] = 1   # smaller: dropped
    for axes in [(), (0,), (1, 2), (0, 1, 2)]:
        flipped = np.flip(mask, axes) if axes else mask
        kept = np.flip(largest_component(flipped), axes) if axes else largest_component(flipped)
        assert kept.sum() == 4 and kept[2, 4, 4] == 0
