"""The per-case time budget: the ensemble shrinks (TTA off, then fewer folds) to fit, says so in
the log and the summary, and still writes a mask on the input's grid."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_process
from test_process import _save, assert_on_grid

from sslmedsam2.container.budget import (
    CasePlan,
    FewShotCosts,
    estimate_seconds,
    fewshot_seconds,
    plan_case,
    plan_fewshot,
)
from sslmedsam2.container.inference import SUMMARY_NAME

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


COSTS = FewShotCosts(encode_s=0.1, track_s=0.5)


def fewshot_cost(supports: int, insertions: int) -> float:
    """10-slice query, supports with 4 unprompted slices each, none cached yet (20 slices)."""
    return fewshot_seconds(10, [4] * supports, 20 * supports, insertions, COSTS)


@pytest.mark.parametrize("budget, supports, insertions, fits", [
    (None, 10, 5, True),
    (fewshot_cost(10, 5), 10, 5, True),
    (fewshot_cost(10, 2) + 1, 10, 2, True),   # insertions go first
    (fewshot_cost(10, 1) + 1, 10, 1, True),
    (fewshot_cost(5, 1) + 1, 5, 1, True),     # then half the supports, and half again
    (fewshot_cost(1, 1) + 1, 1, 1, True),
    (1.0, 1, 1, False),                       # nothing fits: the next engine's turn
])
def test_fewshot_degradation_steps(budget, supports, insertions, fits):
    plan = plan_fewshot(10, [4] * 10, [20] * 10, 5, COSTS, budget)
    assert (plan.supports, plan.insertions, plan.fits) == (supports, insertions, fits)
    assert plan.estimate_s == pytest.approx(fewshot_cost(supports, insertions))
    assert bool(plan.degraded) == (budget is not None and (supports, insertions) != (10, 5))


def test_cached_supports_cost_less():
    """A second query reuses the supports' encodings: the same budget then affords more."""
    budget = fewshot_cost(10, 2) + 1
    first = plan_fewshot(10, [4] * 10, [20] * 10, 5, COSTS, budget)
    later = plan_fewshot(10, [4] * 10, [0] * 10, 5, COSTS, budget)
    assert later.estimate_s < first.estimate_s and later.insertions >= first.insertions


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
