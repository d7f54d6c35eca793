"""What a training run would do, said before it does anything (``sslmedsam2 train --dry-run``).

A researcher pointing the loop at their own collection wants to know, before hours of nnU-Net,
that every file pairs up and sits on its grid, how many cases count as labelled, and what will
be trained on them. The collections are read and checked exactly as the run reads them, so a
problem found here is the one the run would stop on; nothing is written.
"""

from __future__ import annotations

from sslmedsam2.datasets import detect_layout
from sslmedsam2.ssl.config import ScheduleConfig, SSLConfig
from sslmedsam2.ssl.loop import SequenceCases, gather_cases, trains_rounds


def describe_plan(config: SSLConfig) -> str:
    """Each sequence's cases and what trains on them, then the loop, one line each. Raises
    (naming every file at fault) where a collection has problems, as the run would."""
    layout = detect_layout(config.data.train) if config.data.layout == "auto" else config.data.layout
    lines = [f"training collection: {config.data.train} ({layout} layout)"]
    sequences = [gather_cases(config, sequence) for sequence in config.data.sequences]
    for cases in sequences:
        lines += _sequence_lines(config, cases)
    if config.pseudo_labels.engine == "none" or any(trains_rounds(config, cases) for cases in sequences):
        lines.append(_loop_line(config))
    return "\n".join(lines)


def _sequence_lines(config: SSLConfig, cases: SequenceCases) -> list[str]:
    """The sequence's cases, round 0's labeller, the schedules of one round and of the final
    model on them, and how the export is chosen."""
    held_out = f", {len(cases.holdout)} held out" if cases.holdout else ""
    lines = [f"{cases.sequence}: {len(cases.labelled)} labelled, {len(cases.unlabelled)} "
             f"unlabelled{held_out}"]
    if config.pseudo_labels.engine == "none":
        return lines + [f"  final model: {_schedule(config.final, len(cases.labelled))}"]
    if not trains_rounds(config, cases):
        return lines + ["  no unlabelled case to pseudo-label: no rounds; the final model trains on "
                        f"the labelled cases alone, {_schedule(config.final, len(cases.labelled))}"]
    trained = len(cases.labelled) + len(cases.unlabelled)
    return lines + [f"  round 0: {_round_zero(config, cases)}",
                    f"  each round: {_schedule(config.intermediate, trained)}",
                    f"  final model: {_schedule(config.final, trained)}",
                    f"  export: {_export(config, cases)}"]


def _round_zero(config: SSLConfig, cases: SequenceCases) -> str:
    """Round 0's labeller for this sequence: a labelled-only partner needs labels of its own."""
    labels = config.pseudo_labels
    engine = f"{labels.engine} few-shot pseudo labels"
    if not labels.fuse_labelled_only:
        return engine
    if not cases.labelled:
        return (f"{engine} alone (no labelled {cases.sequence} case to train a labelled-only "
                "nnU-Net on)")
    return f"{engine}, fused with an nnU-Net trained on the labelled cases alone ({labels.fusion})"


def _export(config: SSLConfig, cases: SequenceCases) -> str:
    """Whether the SSL model is checked against labelled-only before it is exported."""
    if not config.loop.choose_export:
        return "the SSL model (loop.choose_export is off)"
    if len(cases.labelled) < 2:
        return "the SSL model, unchecked (a check against labelled-only needs 2 labelled cases)"
    return "the SSL model or labelled-only, whichever scores better on the labelled cases"


def _loop_line(config: SSLConfig) -> str:
    """The rounds after round 0, in words."""
    loop = config.loop
    if config.pseudo_labels.engine == "none":
        return "no few-shot engine: the final model trains on the labelled cases alone"
    return (f"rounds: up to {loop.max_rounds} nnU-Net round(s) after round 0, stopping once one "
            f"round's pseudo labels agree with the last's (Dice >= {loop.convergence_dice})")


def _schedule(schedule: ScheduleConfig, n_cases: int) -> str:
    """One training's nnU-Net schedule for a training set of ``n_cases``."""
    profile = schedule.resolve(n_cases)
    return (f"nnU-Net {profile.configuration}, {profile.name} profile, {profile.epochs} epochs x "
            f"{profile.iterations_per_epoch} iterations, folds {','.join(profile.folds)}")
