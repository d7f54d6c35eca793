"""Reproduce SSL-MedSAM2 on CARE-LiSeg with one command, and see how close it came to the paper.

Steps, each logged: check the data (refuse on any problem), state the expected cost from measured
figures, run the semi-supervised loop (resumable: it is ``sslmedsam2 train``), predict the
validation cases through the container's own code path into the organisers' submission layout,
and, given validation ground truth, score Dice and HD per sequence and vendor beside the paper's
figures. Everything lands under ``--work``:

    run/          the semi-supervised run folder (rounds, reports, montages)
    weights/      the exported final models, as process.py reads them
    submission/   LiSeg_pred/<case>/<SEQ>_pred.nii.gz, method_description.md, the run summary
    reproduce.json, reproduce.md   data found, estimate vs actual times, the comparison table
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sslmedsam2.container.inference import InferenceSettings, run_inference
from sslmedsam2.datasets.care_check import RootReport, check_ground_truth, check_root
from sslmedsam2.engines import RuntimeOptions
from sslmedsam2.errors import UsageError
from sslmedsam2.evaluation.folders import CaseResult, aligned_table, evaluate_folders, write_csv
from sslmedsam2.executors import ExecutorConfig, make_executor
from sslmedsam2.io import write_text_atomic
from sslmedsam2.runtime import resolve_device
from sslmedsam2.ssl.config import SSLConfig
from sslmedsam2.ssl.pipeline import run_ssl, run_summary_table

log = logging.getLogger(__name__)

#: The paper's validation figures (Dice, HD mm) and the CARE 2025 leaderboard's best.
PAPER = {"GED4": (0.9710, 20.07), "T1": (0.9648, 21.97)}
LEADERBOARD = {"GED4": {"leaderboard best, in-distribution": (0.9703, 21.40),
                        "leaderboard best, unseen centre": (0.9770, 14.65)}}


@dataclass(frozen=True)
class CostFigures:
    """Measured costs the estimate is built from, and where they were measured."""

    source: str
    query_s: dict[str, float]  # one pseudo-labelled query, by round-0 engine
    iteration_s: float  # one nnU-Net training iteration
    predict_fold_s: float  # one case through one fold, as the deployment runs it


#: benchmarks/gpu/h200-2026-11-26.json: TFFS paper setting per CARE-size query; 3d_fullres stock
#: plan per iteration; 38.6 s per case for 5 folds + TTA.
GPU_COSTS = CostFigures("NVIDIA H200, benchmarks/RESULTS.md 'GPU figures' (CARE-size volumes)",
                        {"sam2": 56.9, "atlas": 3.7, "none": 0.0}, 0.31, 38.6 / 5)
#: benchmarks/RESULTS.md on the 2-core box: CPU-practical TFFS 221 s per query, atlas 3.7 s,
#: cpu-quick about 1.2 s per iteration, example-size volumes.
CPU_COSTS = CostFigures("2 CPU cores, benchmarks/RESULTS.md (example-size volumes)",
                        {"sam2": 221.0, "atlas": 3.7, "none": 0.0}, 1.2, 5.0)


@dataclass(frozen=True)
class ReproduceSettings:
    config: SSLConfig
    val_root: Path
    work: Path
    val_gt: Path | None = None
    #: set when an engine other than SAM2 makes round 0 although the protocol says SAM2
    stand_in: str | None = None
    dry_run: bool = False
    progress: bool = True
    #: where cases and folds run (``--executor``); the estimate divides them among its workers
    executor: ExecutorConfig = ExecutorConfig()


@dataclass
class Step:
    name: str
    estimate_s: float
    actual_s: float | None = None


@dataclass
class Reproduction:
    """What ``reproduce`` found, expected, spent and scored (written as reproduce.json)."""

    data: list[str]
    steps: list[Step]
    cost_source: str
    stand_in: str | None = None
    results: list[dict] = field(default_factory=list)
    table: str = ""


def check_data(settings: ReproduceSettings) -> tuple[RootReport, RootReport]:
    """Every problem of the inputs, logged one per line; UsageError when there is any."""
    train = check_root(settings.config.data.train, "training", labelled=True)
    val = check_root(settings.val_root, "validation", labelled=False)
    reports = [train, val]
    if settings.val_gt is not None:
        reports.append(check_ground_truth(settings.val_gt, val))
    checkpoint = settings.config.pseudo_labels.checkpoint
    problems = [p for r in reports for p in r.problems]
    if settings.config.pseudo_labels.engine == "sam2" and not checkpoint.is_file():
        problems.append(f"{checkpoint}: SAM2 checkpoint not found (pseudo_labels.checkpoint)")
    for report in reports:
        log.info("%s", report.summary())
    for problem in problems:
        log.error("%s", problem)
    if problems:
        raise UsageError(f"{len(problems)} problem(s) in the data (listed above); nothing was "
                         "started")
    return train, val


def estimate(config: SSLConfig, train: RootReport, val: RootReport, costs: CostFigures,
             workers: int = 1) -> list[Step]:
    """Seconds per step from measured figures: round 0 per query, every round's training per
    iteration and fold, predictions per case and fold (the unlabelled cases and the labelled fit),
    the final model, the validation cases.

    ``workers`` GPUs (or CPU workers) take cases and folds as tasks (``--executor ray``):
    sequences still run one after the other, so a step waits for its slowest wave of tasks.
    Validation predictions go through ``process.py``'s code path, on one device.
    """
    labelled, cases = len(train.labelled), len(train.vendors)
    sequences = config.data.sequences
    engine = config.pseudo_labels.engine
    unlabelled = 0 if engine == "none" else cases - labelled

    def waves(tasks: int) -> int:
        return math.ceil(tasks / workers)

    steps = [Step("round 0 pseudo labels", len(sequences) * waves(unlabelled) * costs.query_s[engine]
                  + _fused_partner_s(config, labelled, unlabelled, costs, waves))]
    rounds = config.loop.max_rounds if engine != "none" else 0
    inter = config.intermediate.resolve(labelled + unlabelled)
    for number in range(1, rounds + 1):
        fold_s = inter.epochs * inter.iterations_per_epoch * costs.iteration_s
        predict_s = waves(cases) * len(inter.folds) * costs.predict_fold_s
        steps.append(Step(f"round {number} (train + predict)",
                          len(sequences) * (waves(len(inter.folds)) * fold_s + predict_s)))
    final = config.final.resolve(labelled + unlabelled)
    # the loop reuses the last round's model when the final schedule is the same
    reused = rounds > 0 and final == inter
    models = len(config.final.extra_configurations) + (0 if reused else 1)
    steps.append(Step("final model", len(sequences) * models * waves(len(final.folds)) * final.epochs
                      * final.iterations_per_epoch * costs.iteration_s))
    steps.append(Step("validation predictions", len(val.vendors) * len(sequences) * len(final.folds)
                      * costs.predict_fold_s))
    return steps


def _fused_partner_s(config: SSLConfig, labelled: int, unlabelled: int, costs: CostFigures,
                     waves: Callable[[int], int]) -> float:
    """Round 0's labelled-only nnU-Net (``fuse_labelled_only``): trained on the labelled cases of
    the one sequence that has labels, then predicting its unlabelled cases."""
    if not config.pseudo_labels.fuse_labelled_only or not unlabelled or not labelled:
        return 0.0
    partner = config.intermediate.resolve(labelled)
    fold_s = partner.epochs * partner.iterations_per_epoch * costs.iteration_s
    return (waves(len(partner.folds)) * fold_s
            + waves(unlabelled) * len(partner.folds) * costs.predict_fold_s)


def reproduce(settings: ReproduceSettings) -> Reproduction:
    """Check, estimate, train (resuming), predict, write the submission, score when possible."""
    config, work = settings.config, Path(settings.work)
    if settings.stand_in:
        log.warning("round 0: the %s engine stands in for SAM2 (no checkpoint given); these "
                    "figures are NOT the paper's method", settings.stand_in)
    train, val = check_data(settings)
    on_gpu = resolve_device(config.loop.device).type == "cuda"
    costs = GPU_COSTS if on_gpu else CPU_COSTS
    executor = make_executor(settings.executor)
    steps = estimate(config, train, val, costs,
                     workers=executor.workers if executor.name == "ray" else 1)
    log.info("expected cost (from %s):\n%s", costs.source, steps_table(steps))
    outcome = Reproduction([train.summary(), val.summary()], steps, costs.source, settings.stand_in)
    if settings.dry_run:
        return outcome
    work.mkdir(parents=True, exist_ok=True)
    result = run_ssl(config, work / "run", work / "weights", progress=settings.progress,
                     executor=executor)
    log.info("semi-supervised loop:\n%s", run_summary_table(result.records))
    _record_actual(steps, result.records)
    started = time.perf_counter()
    submission = write_submission(settings, result.weights_dir)
    steps[-1].actual_s = round(time.perf_counter() - started, 1)
    log.info("estimate vs actual:\n%s", steps_table(steps))
    if settings.val_gt is not None:
        results = evaluate_folders(submission / "LiSeg_pred", settings.val_gt,
                                   progress=settings.progress, sequences=config.data.sequences)
        write_csv(results, work / "evaluation.csv")
        outcome.results = [asdict(r) for r in results]
        outcome.table = comparison_table(results, val.vendors)
        print(outcome.table)
    write_text_atomic(json.dumps(asdict(outcome), indent=2, default=str) + "\n",
                      work / "reproduce.json")
    write_text_atomic(_markdown(outcome), work / "reproduce.md")
    return outcome


def _record_actual(steps: list[Step], records: list) -> None:
    """Actual seconds per estimated step from the loop's per-step records."""
    by_step: dict[str, float] = {}
    for record in records:
        by_step[record.step] = by_step.get(record.step, 0.0) + record.seconds
    for step in steps:
        if step.name == "round 0 pseudo labels":
            step.actual_s = by_step.get("round_00", 0.0)
        elif step.name.startswith("round "):
            step.actual_s = by_step.get(f"round_{int(step.name.split()[1]):02d}", 0.0)
        elif step.name == "final model":
            step.actual_s = by_step.get("final", 0.0)


def write_submission(settings: ReproduceSettings, weights: Path) -> Path:
    """The validation cases through process.py's code path (the trained nnU-Net models only,
    the full ensemble, no time budget) into ``submission/LiSeg_pred``, plus a method note."""
    submission = Path(settings.work) / "submission"
    config = settings.config
    summary = run_inference(InferenceSettings(
        input_path=settings.val_root, output_dir=submission, weights_dir=weights,
        engines=("nnunet",), runtime=RuntimeOptions(device=config.loop.device),
        sequences=config.data.sequences))
    if summary.exit_code:
        raise UsageError(f"{summary.counts()['error']} validation case(s) failed (see "
                         f"{submission / 'sslmedsam2-summary.json'}); the submission is incomplete")
    write_text_atomic(method_description(config, settings.stand_in), submission / "method_description.md")
    log.info("submission: %s (zip LiSeg_pred for the organisers)", submission / "LiSeg_pred")
    return submission


def method_description(config: SSLConfig, stand_in: str | None) -> str:
    labels = config.pseudo_labels
    final = config.final.resolve(5)
    engine = (f"{stand_in} registration standing in for SAM2 (not the paper's method)" if stand_in
              else f"{labels.engine} few-shot ({labels.setting} setting)")
    return (
        "# SSL-MedSAM2 (sslmedsam2 reproduction)\n\n"
        f"- Round 0 pseudo labels: {engine}, supports = the labelled GED4 cases"
        f"{' of the query vendor' if labels.same_vendor_supports else ''}; sequences "
        f"{', '.join(config.data.sequences)} (other sequences prompted by GED4 supports).\n"
        f"- nnU-Net v2 {final.configuration}, {len(final.folds)} fold(s), trained on labelled + "
        f"pseudo-labelled cases; up to {config.loop.max_rounds} rounds, stopping when successive "
        f"pseudo labels reach mean Dice {config.loop.convergence_dice}.\n"
        "- Inference: the final fold ensemble, largest connected component.\n")


def comparison_table(results: list[CaseResult], vendors: dict[str, str]) -> str:
    """Dice and HD per sequence (all cases, then per vendor) beside the paper and leaderboard."""
    rows = [["sequence", "vendor", "N", "Dice", "HD mm", "HD95 mm", "paper Dice / HD"]]
    scored = [r for r in results if r.dice is not None]
    for sequence in sorted({r.sequence for r in scored}):
        ours = [r for r in scored if r.sequence == sequence]
        paper = PAPER.get(sequence)
        groups = [("all", ours)] + [(v, [r for r in ours if vendors.get(r.case) == v])
                                    for v in sorted({vendors.get(r.case, "?") for r in ours})]
        for vendor, group in groups:
            rows.append([sequence, vendor, str(len(group)),
                         f"{np.mean([r.dice for r in group]):.4f}",
                         f"{np.mean([r.hd for r in group]):.2f}",
                         f"{np.mean([r.hd95 for r in group]):.2f}",
                         f"{paper[0]:.4f} / {paper[1]:.2f}" if paper and vendor == "all" else ""])
        for name, (dice, hd) in LEADERBOARD.get(sequence, {}).items():
            rows.append([sequence, name, "", "", "", "", f"{dice:.4f} / {hd:.2f}"])
    lines = aligned_table(rows)
    lines.append("HD = maximum symmetric Hausdorff distance, HD95 = its 95th percentile (mm); the "
                 "paper and leaderboard report 'HD'. Means over cases.")
    return "\n".join(lines)


def steps_table(steps: list[Step]) -> str:
    rows = [["step", "expected", "actual"]]
    rows += [[s.name, _duration(s.estimate_s), "-" if s.actual_s is None else _duration(s.actual_s)]
             for s in steps]
    spent = [s.actual_s for s in steps if s.actual_s is not None]
    rows.append(["total", _duration(sum(s.estimate_s for s in steps)),
                 _duration(sum(spent)) if spent else "-"])
    return "\n".join(aligned_table(rows))


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _markdown(outcome: Reproduction) -> str:
    lines = ["# Reproduction of SSL-MedSAM2", ""]
    if outcome.stand_in:
        lines += [f"**Round 0 used the {outcome.stand_in} engine instead of SAM2: not the paper's "
                  "method.**", ""]
    lines += ["## Data", "", *[f"- {d}" for d in outcome.data], "",
              f"## Cost (expected from {outcome.cost_source})", "", "```", steps_table(outcome.steps),
              "```", ""]
    if outcome.table:
        lines += ["## Validation", "", "```", outcome.table, "```", ""]
    return "\n".join(lines)
