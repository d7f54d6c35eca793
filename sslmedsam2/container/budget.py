"""A per-case time budget: decide how much ensemble a case can afford before running it.

Challenge platforms kill a job at a hard limit (Grand Challenge: 20 minutes by default) and keep
nothing. A cheaper mask in time beats a better one never written, so before each case the nnU-Net
engine estimates its cost from the number of sliding-window patches and the seconds one patch
took on this device (measured when the model loads), and drops mirroring TTA first, then folds,
until the estimate fits. The SAM2 few-shot fallback is planned the same way from the seconds
per encoded and per tracked slice timed when it loads: fewer insertions, then fewer supports; when
even one support with one insertion does not fit, the case goes to the next engine (the atlas).
Every step down is logged and recorded in the run summary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: Default per-case budget: a 20-minute platform limit less loading, I/O and a safety margin.
DEFAULT_BUDGET_S = 17 * 60.0
#: Python and data movement around each network pass, as a share of the network's time.
OVERHEAD = 0.3
#: Preprocessing and export (resampling to and from the model's spacing, normalisation), which
#: grow with the input's voxels whatever the ensemble: CPU core-seconds per voxel, measured on a
#: 735 x 512 x 512 volume (37 s on 16 cores, H200 machine, 2026-11-26). Only a fallback: the
#: nnU-Net engine times this on the machine it runs on when it loads a model.
CORE_SECONDS_PER_VOXEL = 3.1e-6


def fixed_seconds(voxels: int, cpus: int, seconds_per_voxel: float | None = None) -> float:
    """The part of a case's time no ensemble choice changes: measured ``seconds_per_voxel`` on
    this machine when known, else the reference constant shared among ``cpus``."""
    if seconds_per_voxel is not None:
        return voxels * seconds_per_voxel
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

    ladder = [(folds, False)] if tta else []
    count = len(folds)
    while count > 1:
        count //= 2
        ladder.append((folds[:count], False))

    def label(choice: tuple[tuple[str, ...], bool]) -> str:
        chosen = choice[0]
        return "TTA off" if chosen == folds else f"{len(chosen)} of {len(folds)} folds, TTA off"

    full = f"{len(folds)} fold(s){' + TTA' if tta else ''}"
    (chosen, use_tta), estimate, degraded, _ = descend(
        (folds, tta), ladder, lambda c: cost(len(c[0]), c[1]), label,
        lambda c: ensemble_text(*c), full, budget_s)
    return CasePlan(chosen, use_tta, estimate, degraded)


@dataclass(frozen=True)
class FewShotCosts:
    """What SAM2 spends on this device, timed when it loads: seconds per slice through the image
    encoder, and per slice tracked through a video (memory attention, decoder, memory encoder)."""

    encode_s: float
    track_s: float


@dataclass(frozen=True)
class FewShotPlan:
    """How many supports (in preference order) and insertions one query gets, the estimate, what
    was dropped, and whether it fits at all."""

    supports: int
    insertions: int
    estimate_s: float
    degraded: list[str] = field(default_factory=list)
    fits: bool = True

    def describe(self) -> str:
        return f"supports={self.supports} insertions={self.insertions}"


def fewshot_seconds(query_slices: int, support_tracked: Sequence[int], to_encode: int,
                    insertions: int, costs: FewShotCosts) -> float:
    """The query's slices and ``to_encode`` support slices (those not cached yet) through the
    encoder; per video (support x insertion) the query's slices and the support's unprompted ones
    tracked (its prompted slices' outputs are cached)."""
    tracked = insertions * sum(query_slices + s for s in support_tracked)
    encoded = query_slices + to_encode
    return (encoded * costs.encode_s + tracked * costs.track_s) * (1 + OVERHEAD)


def plan_fewshot(query_slices: int, support_tracked: Sequence[int], uncached: Sequence[int],
                 insertions: int, costs: FewShotCosts, budget_s: float | None) -> FewShotPlan:
    """The richest few-shot plan within ``budget_s``: insertions halved down to one, then supports
    halved down to one; ``fits=False`` when even that is over. Per support in preference order:
    ``support_tracked[i]`` its unprompted slices, ``uncached[i]`` its slices not encoded yet (0
    once a previous query has cached them)."""
    supports = len(support_tracked)

    def cost(choice: tuple[int, int]) -> float:
        n, k = choice
        return fewshot_seconds(query_slices, support_tracked[:n], sum(uncached[:n]), k, costs)

    ladder, k = [], insertions
    while k > 1:
        k //= 2
        ladder.append((supports, k))
    n = supports
    while n > 1:
        n //= 2
        ladder.append((n, 1))

    def text(choice: tuple[int, int]) -> str:
        return f"{choice[0]} of {supports} supports x {choice[1]} of {insertions} insertions"

    full = f"{supports} supports x {insertions} insertions"
    (n, k), estimate, degraded, fits = descend(
        (supports, insertions), ladder, cost, text, text, full, budget_s)
    return FewShotPlan(n, k, estimate, degraded, fits)


def descend(full: tuple, ladder: list[tuple], cost: Callable[[tuple], float],
            label: Callable[[tuple], str], name: Callable[[tuple], str], full_text: str,
            budget_s: float | None) -> tuple[tuple, float, list[str], bool]:
    """The first of ``full`` then each ``ladder`` step (richest first) whose cost fits
    ``budget_s``, with its estimate, the log lines saying why and what was tried, and whether it
    fits; the last step when none does."""
    first = cost(full)
    if budget_s is None or first <= budget_s:
        return full, first, [], True
    steps = [f"time budget {budget_s:.0f} s < est. {first:.0f} s for {full_text}"]
    for choice in ladder:
        estimate = cost(choice)
        steps.append(f"{label(choice)}: est. {estimate:.0f} s")
        if estimate <= budget_s:
            return choice, estimate, steps, True
    cheapest = ladder[-1] if ladder else full
    estimate = cost(cheapest)
    steps.append(f"still over budget: running the cheapest plan ({name(cheapest)}, "
                 f"est. {estimate:.0f} s)")
    return cheapest, estimate, steps, False
