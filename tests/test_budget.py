"""The per-case time budget: the ensemble shrinks (TTA off, then fewer folds) to fit, says so in
the log and the summary, and still writes a mask on the input's grid."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_process
from sslmedsam2.budget import CasePlan, estimate_seconds, plan_case
from sslmedsam2.inference import SUMMARY_NAME
from test_process import _save, assert_on_grid

FIVE = ("0", "1", "2", "3", "4")


def full_cost(folds: int = 5, tta: bool = True) -> float:
    return estimate_seconds(patches=20, folds=folds, tta=tta, seconds_per_patch=0.5, mirrors=8)


@pytest.mark.parametrize("budget, folds, tta, steps", [
    (None, FIVE, True, 0),                        # no limit: the paper's ensemble
    (full_cost() + 1, FIVE, True, 0),             # it fits
    (full_cost(5, False) + 1, FIVE, False, 1),    # TTA goes first
    (full_cost(2, False) + 1, FIVE[:2], False, 2),  # then half the folds, and half again
    (full_cost(1, False) + 1, FIVE[:1], False, 3),
    (1.0, FIVE[:1], False, 4),                    # nothing fits: the cheapest, flagged
])
def test_each_degradation_step(budget, folds, tta, steps):
    plan = plan_case(FIVE, True, patches=20, seconds_per_patch=0.5, mirrors=8, budget_s=budget)
    assert (plan.folds, plan.tta) == (folds, tta)
    assert len(plan.degraded) == (steps + 1 if steps else 0)  # + the line saying why
    if budget is not None and steps:
        assert plan.degraded[0].startswith(f"time budget {budget:.0f} s")
    if budget == 1.0:
        assert "still over budget" in plan.degraded[-1]


def test_fixed_costs_count_against_the_budget():
    """Resampling a huge volume costs the same whatever the ensemble: it leaves less for TTA."""
    kwargs = dict(patches=20, seconds_per_patch=0.5, mirrors=8, budget_s=full_cost() + 1)
    assert plan_case(FIVE, True, **kwargs).tta
    assert not plan_case(FIVE, True, fixed_s=10.0, **kwargs).tta
    assert plan_case(FIVE, True, fixed_s=10.0, **kwargs).estimate_s == full_cost(5, False) + 10.0


def test_no_tta_asked_means_folds_go_first():
    plan = plan_case(FIVE, False, patches=20, seconds_per_patch=0.5, mirrors=8,
                     budget_s=full_cost(3, False))
    assert plan == CasePlan(FIVE[:2], False, full_cost(2, False), plan.degraded)
    assert "2 of 5 folds" in plan.degraded[-1]


@pytest.fixture()
def two_fold_weights(tmp_path, trained_weights):
    """The tiny trained model as a 2-fold ensemble (both folds the same weights: same cost)."""
    weights = tmp_path / "weights"
    shutil.copytree(trained_weights, weights)
    model = next((weights / "nnunet" / "GED4").iterdir())
    for fold in ("0", "1"):
        shutil.copytree(model / "fold_all", model / f"fold_{fold}")
    shutil.rmtree(model / "fold_all")
    return weights


@pytest.mark.parametrize("budget, used, degraded", [
    ("100000", "folds=0,1 tta=on", False),
    ("0.0001", "folds=0 tta=off", True),
])
def test_process_py_fits_the_budget(tmp_path, two_fold_weights, real_mr, budget, used, degraded):
    image_path = _save(real_mr, tmp_path / "in" / "case.nii.gz")
    out = tmp_path / "out"
    result = run_process("--input", image_path, "--output", out, "--weights", two_fold_weights,
                         "--folds", "0,1", "--tta", "--time-budget", budget)
    assert result.returncode == 0, result.stderr
    assert_on_grid(out / "case_pred.nii.gz", real_mr)
    report = json.loads((out / SUMMARY_NAME).read_text())
    (case,) = report["cases"]
    assert used in case["message"] and "est=" in case["message"]
    budget_warnings = [w for w in report["warnings"] if "time budget" in w]
    if degraded:  # every step down is in the log and in the summary
        (warning,) = budget_warnings
        for step in ("TTA off", "1 of 2 folds", "still over budget"):
            assert step in warning and step in result.stderr
    else:
        assert not budget_warnings
