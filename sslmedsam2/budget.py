"""A per-case time budget: decide how much ensemble a case can afford before running it.

Challenge platforms kill a job at a hard limit (Grand Challenge: 20 minutes by default) and keep
nothing. A cheaper mask in time beats a better one never written, so before each case the nnU-Net
engine estimates its cost from the number of sliding-window patches and the seconds one patch
took on this device (measured when the model loads), and drops mirroring TTA first, then folds,
until the estimate fits. Every step down is logged and recorded in the run summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Default per-case budget: a 20-minute platform limit less loading, I/O and a safety margin.
DEFAULT_BUDGET_S = 17 * 60.0
#: Python and data movement around each network pass, as a share of the network's time.
OVERHEAD = 0.3
#: Preprocessing and export (resampling to and from the model's spacing, normalisation), which
#: grow with the input's voxels whatever the ensemble: CPU core-seconds per voxel, measured on a
#: 735 x 512 x 512 volume (37 s on 16 cores, H200 machine, 2026-11-26).
CORE_SECONDS_PER_VOXEL = 3.1e-6


def fixed_seconds(voxels: int, cpus: int) -> float:
    """The part of a case's time no ensemble choice changes."""
    return voxels * CORE_SECONDS_PER_VOXEL / max(1, cpus)


@dataclass(frozen=True)
class CasePlan:
    """What one case runs: which folds, with or without TTA, the estimate, and what was dropped."""

    folds: tuple[str, ...]
    tta: bool
    estimate_s: float
    degraded: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return ensemble_text(self.folds, self.tta)


def ensemble_text(folds: tuple[str, ...], tta: bool) -> str:
    """``folds=0,1 tta=on``: how logs and summaries name an ensemble."""
    return f"folds={','.join(folds)} tta={'on' if tta else 'off'}"


def estimate_seconds(patches: int, folds: int, tta: bool, seconds_per_patch: float,
                     mirrors: int) -> float:
    """Network passes (patches x folds x mirrors when TTA) times their cost, plus overhead."""
    passes = patches * folds * (mirrors if tta else 1)
    return passes * seconds_per_patch * (1 + OVERHEAD)


def plan_case(folds: tuple[str, ...], tta: bool, patches: int, seconds_per_patch: float,
              mirrors: int, budget_s: float | None, fixed_s: float = 0.0) -> CasePlan:
    """The richest plan within ``budget_s``: first without TTA, then with half the folds at a
    time; the cheapest (one fold, no TTA) when nothing fits, flagged as over budget.
    ``fixed_s``: time the case takes whatever the plan (see ``fixed_seconds``)."""
    def cost(f: int, t: bool) -> float:
        return fixed_s + estimate_seconds(patches, f, t, seconds_per_patch, mirrors)

    plan = CasePlan(folds, tta, cost(len(folds), tta))
    if budget_s is None or plan.estimate_s <= budget_s:
        return plan
    steps = []
    candidates = [folds] if tta else []
    count = len(folds)
    while count > 1:
        count //= 2
        candidates.append(folds[:count])
    for chosen in candidates:
        estimate = cost(len(chosen), False)
        label = "TTA off" if chosen == folds else f"{len(chosen)} of {len(folds)} folds, TTA off"
        steps.append(f"{label}: est. {estimate:.0f} s")
        if estimate <= budget_s:
            return CasePlan(chosen, False, estimate, _reasons(plan, budget_s, steps))
    cheapest = CasePlan(folds[:1], False, cost(1, False))
    steps.append(f"still over budget: running the cheapest plan ({cheapest.describe()}, "
                 f"est. {cheapest.estimate_s:.0f} s)")
    return CasePlan(cheapest.folds, False, cheapest.estimate_s, _reasons(plan, budget_s, steps))


def _reasons(full: CasePlan, budget_s: float, steps: list[str]) -> list[str]:
    return [f"time budget {budget_s:.0f} s < est. {full.estimate_s:.0f} s for "
            f"{len(full.folds)} fold(s){' + TTA' if full.tta else ''}", *steps]
