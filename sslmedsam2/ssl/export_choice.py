"""Never ship worse than where you started: SSL model or labelled-only model, decided on the
labelled cases alone.

Self-training can end below a model trained on the labelled cases only (pseudo labels from a
few-shot engine that fails on some anatomy teach those failures). Which of the two generalises
better is measured by cross-validation over the labelled cases (``loop.choose_export_folds``
groups; leave-one-out when there are that few): for each group, both training sets are rebuilt
without it (the SSL one keeps its pseudo-labelled cases), trained with the rounds' (intermediate)
schedule on one fold, the cheaper of the two, and scored on the group's own masks; where the
loop warm-starts round 1 from a labelled-only model, the SSL training here starts from the
group's labelled-only model likewise. The held-out split is never looked at. With fewer than
two labelled cases nothing can be measured: the SSL model is exported, and the report says it is
unchecked. Cost: two trainings per group.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sslmedsam2.io import write_text_atomic
from sslmedsam2.pseudo_label import Query
from sslmedsam2.runtime import available_cpus
from sslmedsam2.ssl.dataset import with_labelled_share
from sslmedsam2.supports import Support
from sslmedsam2.training.supervised import fit_nnunet

if TYPE_CHECKING:
    from sslmedsam2.ssl.loop import SemiSupervisedRun, SequenceCases, StepRecord

log = logging.getLogger(__name__)

RECORD = "choice.json"
SSL, LABELLED_ONLY = "ssl", "labelled-only"


@dataclass
class ExportChoice:
    """Which model a sequence exports, and the figures that decided it."""

    sequence: str
    exported: str
    reason: str
    #: labelled case -> Dice when left out, per arm
    ssl_dice: dict[str, float] = field(default_factory=dict)
    labelled_only_dice: dict[str, float] = field(default_factory=dict)

    @property
    def ssl_mean(self) -> float | None:
        return _mean(self.ssl_dice)

    @property
    def labelled_only_mean(self) -> float | None:
        return _mean(self.labelled_only_dice)


def choose_export(run: "SemiSupervisedRun", cases: "SequenceCases", final: "StepRecord",
                  labels_dir: Path) -> ExportChoice:
    """Compare the SSL training set (``final.trained_on``, pseudo labels in ``labels_dir``) with
    the labelled cases alone, each case of ``cases.labelled`` left out in turn. Resumable."""
    folder = run.step_dir(cases.sequence, "export_choice")
    if (folder / RECORD).is_file():
        return ExportChoice(**json.loads((folder / RECORD).read_text()))
    if len(cases.labelled) < 2:
        choice = ExportChoice(cases.sequence, SSL, f"{len(cases.labelled)} labelled case: no "
                              "labelled case can be left out to compare; SSL model exported unchecked")
    else:
        choice = ExportChoice(cases.sequence, SSL, "")
        groups = np.array_split(np.arange(len(cases.labelled)),
                                min(run.config.loop.choose_export_folds, len(cases.labelled)))
        ssl_set = rebuild_training_set(cases, final.trained_on or [], labels_dir)
        labelled_names = {s.case for s in cases.labelled}
        pseudo = [s for s in ssl_set if s.case not in labelled_names]
        ignore = bool(pseudo) and run.config.pseudo_labels.ignore_uncertainty_above is not None
        for number, group in enumerate(groups):
            left_out = [cases.labelled[i] for i in group]
            others = [s for s in cases.labelled if s not in left_out]
            model, scores = _left_out_dice(run, cases, others, left_out,
                                           folder / f"{LABELLED_ONLY}_fold{number}", number)
            choice.labelled_only_dice.update(scores)
            ssl_training = with_labelled_share(others, pseudo, run.config.pseudo_labels.labelled_share)
            _, scores = _left_out_dice(run, cases, ssl_training, left_out,
                                       folder / f"{SSL}_fold{number}", number, ignore,
                                       model if _warm_started(run) else None)
            choice.ssl_dice.update(scores)
        better = choice.labelled_only_mean > choice.ssl_mean
        choice.exported = LABELLED_ONLY if better else SSL
        choice.reason = (f"Dice on labelled cases left out of training ({len(groups)}-fold over "
                         f"{len(cases.labelled)}): SSL {choice.ssl_mean:.4f}, labelled-only "
                         f"{choice.labelled_only_mean:.4f}")
    log.log(logging.WARNING if choice.exported == LABELLED_ONLY else logging.INFO,
            "%s export: %s model (%s)", cases.sequence, choice.exported, choice.reason)
    write_text_atomic(json.dumps(asdict(choice), indent=2) + "\n", folder / RECORD)
    return choice


def read_choice(run: "SemiSupervisedRun", sequence: str) -> ExportChoice | None:
    """The decision a finished run made for ``sequence``, if it made one."""
    path = run.step_dir(sequence, "export_choice") / RECORD
    return ExportChoice(**json.loads(path.read_text())) if path.is_file() else None


def rebuild_training_set(cases: "SequenceCases", trained_on: list[str],
                         labels_dir: Path) -> list[Support]:
    """The cases a model was trained on, with the masks it saw: labelled cases their own, the
    others their kept pseudo labels in ``labels_dir``."""
    labelled = {s.case: s for s in cases.labelled}
    queries = {q.case: q for q in cases.unlabelled}
    return [labelled.get(case) or Support(case, queries[case].image, labels_dir / f"{case}.nii.gz",
                                          queries[case].vendor) for case in trained_on]


def _warm_started(run: "SemiSupervisedRun") -> bool:
    """Whether the SSL model's first round started from a labelled-only model, which the
    comparison then mirrors (``loop.warm_start`` with a fused round 0)."""
    return run.config.loop.warm_start and run.config.pseudo_labels.fuse_labelled_only


def _left_out_dice(run: "SemiSupervisedRun", cases: "SequenceCases", training: list[Support],
                   left_out: list[Support], folder: Path, number: int, ignore: bool = False,
                   warm_start: Path | None = None) -> tuple[Path, dict[str, float]]:
    """Train on ``training`` (intermediate schedule, one fold; from ``warm_start``'s weights if
    given), segment ``left_out``, score them; returns the model too."""
    from sslmedsam2.ssl.loop import mask_dice

    profile = replace(run.config.intermediate.resolve(len(training)), folds=("all",))
    model = fit_nnunet(training, folder / "nnunet", profile, cases.sequence,
                       run.config.loop.dataset_id, run.device, available_cpus(), ignore=ignore,
                       executor=run.executor, seed=run.config.loop.seed + 200 + number,
                       label=f"{cases.sequence} {folder.name}", show_progress=run.progress,
                       warm_start=warm_start)
    engine = run._nnunet_engine(cases.sequence, model, profile)
    queries = [Query(s.case, s.image, s.vendor) for s in left_out]
    run._label(engine, queries, folder / "prediction", cases.sequence, largest_only=True)
    scores = {}
    for support in left_out:
        prediction = folder / "prediction" / support.case / f"{cases.sequence}.nii.gz"
        scores[support.case] = (round(mask_dice(prediction, support.mask), 4)
                                if prediction.is_file() else 0.0)
    return model, scores


def _mean(scores: dict[str, float]) -> float | None:
    return round(float(np.mean(list(scores.values()))), 4) if scores else None
