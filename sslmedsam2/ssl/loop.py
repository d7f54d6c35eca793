"""FSL-nnUNet: few-shot pseudo labels, then nnU-Net rounds that refine them until they stop changing.

Per sequence, under ``<run>/<SEQ>/``:

* ``round_00``: pseudo labels of every unlabelled case from a few-shot engine (atlas or SAM2),
  with uncertainty maps. Supports are the labelled cases (CARE: the labelled GED4 cases, also for
  T1/T2/DWI queries). With ``fuse_labelled_only`` (the default), an nnU-Net trained here on the
  sequence's labelled cases labels them too, and the two are averaged (``engines.average``): the
  liver where their mean probability reaches one half, the few-shot engine's organ alone where
  the two part ways (``fusion = "average-atlas"``; ``"average"``: the nnU-Net's organ there;
  ``"agreement"``: only the liver both agree on, ``engines.agreement``).
* ``round_NN`` (1..max_rounds): nnU-Net (``intermediate`` schedule) on labelled + kept pseudo
  labels of the previous round; its fold ensemble predicts every unlabelled case with
  probabilities, which become this round's pseudo labels and uncertainty maps. It also segments
  the labelled cases ("labelled fit", a drift detector). The loop stops when the mean Dice
  between successive pseudo labels reaches ``convergence_dice``, or when the labelled fit drops
  below an earlier round's (``keep_best_round``).
* ``final``: the deployed model (``final`` schedule) on the chosen round's pseudo labels (the
  last, or the best before drift), or that round's model when both schedules are the same.
* ``served`` (with a held-out split and ``serve_average``, after the export): the held-out cases
  segmented as ``process.py`` serves the exported weights, the model averaged with the atlas.

Every step ends by writing a small JSON record atomically; a step with its record is finished and
is never redone, so a killed run continues where it stopped when the same command is run again.
Inside a step, finished cases and folds are kept as well (see ``pseudo_label`` and
``training.fit_nnunet``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from sslmedsam2.datasets import detect_layout, read_collection, require_clean
from sslmedsam2.engines.agreement import AgreementEngine
from sslmedsam2.engines.average import AverageEngine
from sslmedsam2.engines.base import Engine, RuntimeOptions
from sslmedsam2.engines.nnunet import NnUNetEngine
from sslmedsam2.errors import SSLMedSAM2Error
from sslmedsam2.evaluation.folders import evaluate_pair, find_ground_truth
from sslmedsam2.evaluation.metrics import dice
from sslmedsam2.executors import Executor, LocalExecutor
from sslmedsam2.io import write_text_atomic
from sslmedsam2.logs import FILE_ONLY
from sslmedsam2.pseudo_label import CaseLabeller, Query, find_queries, outputs_of, pseudo_label
from sslmedsam2.runtime import available_cpus, resolve_device
from sslmedsam2.sequences import CARE_SEQUENCES
from sslmedsam2.ssl.config import SSLConfig
from sslmedsam2.ssl.dataset import Verdict, pseudo_labelled_cases, with_labelled_share
from sslmedsam2.ssl.export_choice import LABELLED_ONLY, SSL, choose_export, rebuild_training_set
from sslmedsam2.supports import Support
from sslmedsam2.training.supervised import TrainingProfile, check_folds, fit_nnunet, trained_model_folder

log = logging.getLogger(__name__)

RECORD = "step.json"
#: the step that scores the exported weights as process.py serves them
SERVED = "served"


@dataclass(frozen=True)
class SequenceCases:
    """The training cases of one sequence: labelled ones (own masks) and the rest (queries)."""

    sequence: str
    labelled: list[Support]
    unlabelled: list[Query]
    holdout: list[Query]
    #: held-out case -> its ground-truth mask
    holdout_truth: dict[str, Path]


@dataclass
class StepRecord:
    """What a finished round (or the final step) produced; the per-round report row."""

    sequence: str
    step: str
    seconds: float
    engine: str
    labelled: int = 0
    pseudo_kept: int = 0
    pseudo_dropped: int = 0
    change_dice_mean: float | None = None
    change_dice_min: float | None = None
    labelled_dice_mean: float | None = None
    holdout_dice_mean: float | None = None
    holdout_hd95_mean: float | None = None
    holdout_cases: int = 0
    model: str | None = None
    folds: list[str] | None = None
    dropped: dict[str, str] | None = None
    failed: list[str] | None = None
    trained_on: list[str] | None = None
    companions: list[str] | None = None
    #: final only: the round whose model (same schedule) or pseudo labels it builds on
    based_on: str | None = None
    #: final only: the model exported, "ssl" or "labelled-only" (see ssl.export_choice)
    export: str | None = None


def read_record(folder: Path) -> StepRecord | None:
    path = folder / RECORD
    return StepRecord(**json.loads(path.read_text())) if path.is_file() else None


def write_record(folder: Path, record: StepRecord) -> StepRecord:
    write_text_atomic(json.dumps(asdict(record), indent=2) + "\n", folder / RECORD)
    return record


def gather_cases(config: SSLConfig, sequence: str) -> SequenceCases:
    """Labelled and unlabelled training cases of ``sequence``, and its held-out cases with their
    ground truth; every problem of either collection is named before anything runs."""
    data = config.data
    train = require_clean(read_collection(data.train, sequence, data.layout),
                          need_labels=sequence == labelled_sequence(config))
    if not train.labelled and not train.unlabelled:
        raise SSLMedSAM2Error(f"{data.train}: no {sequence} volumes ({train.layout} layout)")
    if train.layout == "care" and sequence not in CARE_SEQUENCES:
        raise SSLMedSAM2Error(f"{data.train}: a CARE root has no sequence {sequence!r} (choose "
                              f"from {', '.join(CARE_SEQUENCES)})")
    holdout, truth = holdout_cases(config, sequence)
    return SequenceCases(sequence, train.labelled, train.unlabelled, holdout, truth)


def trains_rounds(config: SSLConfig, cases: SequenceCases) -> bool:
    """Whether pseudo labels have anything to teach: a few-shot engine and unlabelled cases.
    Without unlabelled cases every round would retrain the labelled-only model."""
    return config.pseudo_labels.engine != "none" and bool(cases.unlabelled)


def holdout_cases(config: SSLConfig, sequence: str) -> tuple[list[Query], dict[str, Path]]:
    """The held-out split's volumes and, per case, its ground-truth mask."""
    data = config.data
    if data.holdout_images is None:
        return [], {}
    if data.holdout_labels is not None:  # CARE: masks apart from the images
        truth = find_ground_truth(data.holdout_labels)
        return (find_queries(data.holdout_images, sequence),
                {case: path for (case, seq), path in truth.items() if seq == sequence})
    collection = require_clean(read_collection(data.holdout_images, sequence, "auto"))
    queries = [Query(s.case, s.image, s.vendor) for s in collection.labelled] + collection.unlabelled
    return sorted(queries, key=lambda q: q.case), {s.case: s.mask for s in collection.labelled}


def is_care(config: SSLConfig) -> bool:
    """Whether the training collection is a CARE root (several sequences, one labelled)."""
    layout = config.data.layout
    return (detect_layout(config.data.train) if layout == "auto" else layout) == "care"


def labelled_sequence(config: SSLConfig) -> str:
    """The sequence with masks: CARE's labelled sequence, or a plain collection's only one."""
    return config.data.labelled_sequence if is_care(config) else config.data.sequences[0]


def training_supports(config: SSLConfig) -> list[Support]:
    """The labelled cases every sequence's few-shot round draws on."""
    return read_collection(config.data.train, labelled_sequence(config), config.data.layout).labelled


def fewshot_engine(config: SSLConfig, supports: list[Support]) -> Engine:
    """The round-0 labeller named in the config, over the labelled supports."""
    labels = config.pseudo_labels
    if labels.engine == "atlas":
        from sslmedsam2.engines.atlas import AtlasEngine
        from sslmedsam2.registration.head_foot_search import HeadFootSearch
        from sslmedsam2.registration.label_propagation import AtlasConfig
        from sslmedsam2.registration.syn import SynConfig

        syn = SynConfig(start=labels.atlas_syn_start,
                        search=HeadFootSearch(range_mm=labels.atlas_head_foot_search_mm))
        atlas = AtlasConfig(method=labels.atlas_method, syn=syn,
                            weighted=labels.atlas_weighting, intensity=labels.atlas_intensity)
        return AtlasEngine(supports, atlas,
                           max_supports=labels.max_supports, origin=str(config.data.train),
                           support_sequence=labelled_sequence(config))
    from sslmedsam2.engines.sam2 import Sam2Engine
    from sslmedsam2.fewshot.checkpoints import resolve_checkpoint
    from sslmedsam2.fewshot.tffs import TFFSConfig

    setting = {"paper": TFFSConfig(), "cpu-practical": TFFSConfig.cpu_practical(), "auto": None}
    tffs = setting[labels.setting]
    if tffs is not None and labels.max_supports:
        tffs = TFFSConfig(**{**tffs.__dict__, "max_supports": labels.max_supports})
    return Sam2Engine(supports, resolve_checkpoint(checkpoint=labels.checkpoint),
                      RuntimeOptions(device=config.loop.device), tffs)


EngineRecipe = Callable[[], Engine]


class SemiSupervisedRun:
    """One run folder: configure once, then :meth:`run` (again, after a kill, to resume).

    Cases (pseudo labels, predictions) and folds go to ``executor``: this process by default, or
    a Ray cluster. The files are the same either way, so a run may change executor on resuming.
    """

    def __init__(self, config: SSLConfig, run_dir: Path, progress: bool = True,
                 executor: Executor | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir).resolve()
        self.progress = progress
        self.executor = executor or LocalExecutor()
        self.device = resolve_device(config.loop.device)
        # the engine last built in this process and its recipe: reused while steps ask for it
        self._built: tuple[EngineRecipe, Engine] | None = None

    # the collection is read when a step needs it, not when the run is configured
    @cached_property
    def supports(self) -> list[Support]:
        return training_supports(self.config)

    @cached_property
    def labelled_sequence(self) -> str:
        return labelled_sequence(self.config)

    @cached_property
    def _fewshot(self) -> EngineRecipe:
        return partial(fewshot_engine, self.config, self.supports)

    # -- the loop -------------------------------------------------------------------------
    def run_sequence(self, sequence: str) -> tuple[list[StepRecord], Path]:
        """Rounds until convergence, then the final model; returns the records and the folder of
        the model to export (the SSL one, or labelled-only where that measured better)."""
        cases = gather_cases(self.config, sequence)
        records: list[StepRecord] = []
        semi_supervised = self._semi_supervised(cases)
        if semi_supervised:
            if not self.supports:
                raise SSLMedSAM2Error(f"{self.config.data.train}: no labelled case (image with "
                                      "a mask) to draw pseudo labels from")
            records.append(self._round_zero(cases))
            for number in range(1, self.config.loop.max_rounds + 1):
                records.append(self._round(cases, number))
                if self._converged(records[-1]):
                    log.info("%s: converged after round %d (change Dice %.4f >= %.4f)", sequence,
                             number, records[-1].change_dice_mean, self.config.loop.convergence_dice)
                    break
                if self._drifted(records):
                    break
        (final, model), labels_dir = self._final(cases, self._chosen(records))
        records.append(final)
        if not semi_supervised or not self.config.loop.choose_export:
            return records, model
        final.export = choose_export(self, cases, final, labels_dir).exported
        write_record(self.step_dir(sequence, "final"), final)
        if final.export == SSL:
            return records, model
        fallback, model = self._labelled_only(cases)
        return records + [fallback], model

    def _semi_supervised(self, cases: SequenceCases) -> bool:
        """:func:`trains_rounds`, saying so where only the missing unlabelled cases stop it."""
        if self.config.pseudo_labels.engine != "none" and not cases.unlabelled:
            log.warning("%s: no unlabelled case to pseudo-label; the final model trains on the %d "
                        "labelled case(s) alone", cases.sequence, len(cases.labelled))
        return trains_rounds(self.config, cases)

    def score_served(self, sequence: str, weights_dir: Path, exported: StepRecord) -> StepRecord | None:
        """The held-out split as ``process.py`` serves it from ``weights_dir``: the exported model
        averaged with the atlas (``loop.serve_average``). The rounds score the model alone; this
        is the figure a user of the weights gets. None without a held-out split."""
        cases = gather_cases(self.config, sequence)
        folder = self.step_dir(sequence, SERVED)
        done = read_record(folder)
        if done or not cases.holdout:
            return done
        started = time.perf_counter()
        record = StepRecord(sequence=sequence, step=SERVED, seconds=0.0, engine=AverageEngine.name,
                            labelled=exported.labelled, based_on=exported.step)
        log.info("%s: the exported %s model averaged with the atlas, as process.py serves it, on "
                 "%d held-out case(s)", sequence, exported.step, len(cases.holdout))
        served = partial(AverageEngine.from_weights, weights_dir,
                         RuntimeOptions(device=self.config.loop.device))
        self._score_holdout(served, cases, folder, record)
        record.seconds = round(time.perf_counter() - started, 1)
        return write_record(folder, record)

    def _converged(self, record: StepRecord) -> bool:
        change = record.change_dice_mean
        return change is not None and change >= self.config.loop.convergence_dice

    def _drifted(self, records: list[StepRecord]) -> bool:
        """The last round fits the labelled masks worse than the best earlier round."""
        if not self.config.loop.keep_best_round:
            return False
        fits = [r.labelled_dice_mean for r in records]
        if fits[-1] is None or not any(f is not None for f in fits[:-1]):
            return False
        best = max(f for f in fits[:-1] if f is not None)
        if fits[-1] >= best - self.config.loop.drift_tolerance:
            return False
        log.warning("%s: drift after %s (labelled-mask Dice %.4f < %.4f of an earlier round); "
                    "stopping, the final model comes from %s", records[-1].sequence,
                    records[-1].step, fits[-1], best, self._chosen(records).step)
        return True

    def _chosen(self, records: list[StepRecord]) -> StepRecord | None:
        """The round the final model builds on: the last, or the best labelled fit."""
        if not records:
            return None
        scored = [r for r in records if r.labelled_dice_mean is not None]
        if not self.config.loop.keep_best_round or not scored:
            return records[-1]
        return max(scored, key=lambda r: r.labelled_dice_mean)  # first of equals: fewer rounds

    def step_dir(self, sequence: str, step: str) -> Path:
        return self.run_dir / sequence / step

    def _round_zero(self, cases: SequenceCases) -> StepRecord:
        folder = self.step_dir(cases.sequence, "round_00")
        done = read_record(folder)
        if done:
            return done
        started = time.perf_counter()
        engine, name = self._round_zero_engine(cases, folder)
        log.info("%s round 0: %s pseudo labels for %d unlabelled case(s) from %d support(s)",
                 cases.sequence, name, len(cases.unlabelled), len(self.supports))
        failed = self._label(engine, cases.unlabelled, folder / "pseudo", cases.sequence)
        record = StepRecord(sequence=cases.sequence, step="round_00", seconds=0.0,
                            engine=name, labelled=len(cases.labelled), failed=failed)
        self._score_holdout(engine, cases, folder, record)
        record.seconds = round(time.perf_counter() - started, 1)
        return write_record(folder, record)

    def _round_zero_engine(self, cases: SequenceCases, folder: Path) -> tuple[EngineRecipe, str]:
        """The few-shot engine, or (``fuse_labelled_only``) that engine fused with an nnU-Net trained
        here on the labelled cases alone: their agreement, or their average (``fusion``), which keeps
        the model's organ (``average``) or the few-shot engine's (``average-atlas``) where they part.
        A sequence without labels of its own (T1 from GED4 supports) has no partner to train."""
        name = self.config.pseudo_labels.engine
        if not self._fuses(cases):
            return self._fewshot, name
        record = StepRecord(sequence=cases.sequence, step="round_00", seconds=0.0, engine="nnunet")
        model, profile = self._train(cases, None, folder / "labelled_only", self.config.intermediate,
                                     0, record)
        partner = self._nnunet_engine(cases.sequence, model, profile)
        if self.config.pseudo_labels.fusion == "average":
            return (partial(AverageEngine.ordered_of, partner, self._fewshot, atlas_first=False),
                    f"labelled-only nnU-Net averaged with {name}")
        if self.config.pseudo_labels.fusion == "average-atlas":
            return (partial(AverageEngine.ordered_of, partner, self._fewshot, atlas_first=True),
                    f"{name} averaged with labelled-only nnU-Net, {name} alone where they part")
        return partial(AgreementEngine.of, self._fewshot, partner), f"{name} + labelled-only nnU-Net"

    def _fuses(self, cases: SequenceCases) -> bool:
        """Whether round 0 trains a labelled-only partner for this sequence (it needs labels)."""
        return self.config.pseudo_labels.fuse_labelled_only and bool(cases.labelled)

    def _round(self, cases: SequenceCases, number: int) -> StepRecord:
        step = f"round_{number:02d}"
        folder = self.step_dir(cases.sequence, step)
        done = read_record(folder)
        if done:
            return done
        started = time.perf_counter()
        previous = self.step_dir(cases.sequence, f"round_{number - 1:02d}") / "pseudo"
        record = StepRecord(sequence=cases.sequence, step=step, seconds=0.0, engine="nnunet",
                            labelled=len(cases.labelled))
        model, profile = self._train(cases, previous, folder, self.config.intermediate, number,
                                     record, self._warm_start(cases, number))
        engine = self._nnunet_engine(cases.sequence, model, profile)
        log.info("%s %s: predicting %d unlabelled case(s) with the %s ensemble", cases.sequence,
                 step, len(cases.unlabelled), ",".join(profile.folds), extra=FILE_ONLY)
        record.failed = self._label(engine, cases.unlabelled, folder / "pseudo", cases.sequence)
        record.change_dice_mean, record.change_dice_min = change_between(
            previous, folder / "pseudo", cases.unlabelled, cases.sequence)
        record.labelled_dice_mean = self._labelled_fit(engine, cases, folder)
        self._score_holdout(engine, cases, folder, record)
        record.seconds = round(time.perf_counter() - started, 1)
        log.info("%s %s done in %.0f s: change Dice %s, labelled fit %s, held-out Dice %s",
                 cases.sequence, step, record.seconds, _fmt(record.change_dice_mean),
                 _fmt(record.labelled_dice_mean), _fmt(record.holdout_dice_mean))
        return write_record(folder, record)

    def _warm_start(self, cases: SequenceCases, number: int) -> Path | None:
        """The model round ``number`` starts from with ``loop.warm_start``: the previous round's,
        or for round 1 the fused round 0's labelled-only partner (None: from scratch)."""
        if not self.config.loop.warm_start:
            return None
        if number > 1:
            previous = read_record(self.step_dir(cases.sequence, f"round_{number - 1:02d}"))
            return Path(previous.model) if previous and previous.model else None
        if not self._fuses(cases):
            return None
        partner = trained_model_folder(
            self.step_dir(cases.sequence, "round_00") / "labelled_only" / "nnunet",
            self.config.intermediate.resolve(len(cases.labelled)), cases.sequence,
            self.config.loop.dataset_id)
        return partner if partner.is_dir() else None

    def _labelled_fit(self, engine: EngineRecipe, cases: SequenceCases, folder: Path) -> float | None:
        """Mean Dice of this round's model on the labelled cases' own masks. They are training
        cases, so the figure is optimistic; it serves to detect drift between rounds."""
        if not cases.labelled or not self.config.loop.keep_best_round:
            return None
        queries = [Query(s.case, s.image, s.vendor) for s in cases.labelled]
        out = folder / "labelled_fit"
        self._label(engine, queries, out, cases.sequence)
        scores = [mask_dice(mask, s.mask) for s in cases.labelled
                  if (mask := out / s.case / f"{cases.sequence}.nii.gz").is_file()]
        return round(float(np.mean(scores)), 4) if scores else None

    def _final(self, cases: SequenceCases, last: StepRecord | None
               ) -> tuple[tuple[StepRecord, Path], Path]:
        """The deployed model, built on round ``last`` (None: labelled cases only); with the
        folder of the pseudo labels it was trained on."""
        folder = self.step_dir(cases.sequence, "final")
        same = last is not None and last.step != "round_00" and self._same_schedules(cases)
        labels_dir = (self.step_dir(cases.sequence, last.step) if same else folder) / "labels"
        done = read_record(folder)
        if done:
            return (done, Path(done.model)), labels_dir
        started = time.perf_counter()
        record = StepRecord(sequence=cases.sequence, step="final", seconds=0.0, engine="nnunet",
                            labelled=len(cases.labelled))
        if same:
            log.info("%s final: the %s model (same schedule as the final one)", cases.sequence,
                     last.step)
            record = StepRecord(**{**asdict(last), "step": "final", "seconds": 0.0})
        else:
            source = self.step_dir(cases.sequence, last.step) / "pseudo" if last else None
            model, profile = self._train(cases, source, folder, self.config.final, 99, record)
            self._score_holdout(self._nnunet_engine(cases.sequence, model, profile), cases,
                                folder, record)
        record.based_on = last.step if last else None
        record.companions = self._companions(cases, record, labels_dir, folder)
        record.seconds = round(time.perf_counter() - started, 1)
        return (write_record(folder, record), Path(record.model)), labels_dir

    def _same_schedules(self, cases: SequenceCases) -> bool:
        n_train = len(cases.labelled) + len(cases.unlabelled)
        return self.config.final.resolve(n_train) == self.config.intermediate.resolve(n_train)

    def _labelled_only(self, cases: SequenceCases) -> tuple[StepRecord, Path]:
        """The final schedule on the labelled cases alone: exported when it measured better."""
        folder = self.step_dir(cases.sequence, "final_labelled_only")
        done = read_record(folder)
        if done:
            return done, Path(done.model)
        started = time.perf_counter()
        record = StepRecord(sequence=cases.sequence, step="final_labelled_only", seconds=0.0,
                            engine="nnunet", labelled=len(cases.labelled), export=LABELLED_ONLY)
        model, profile = self._train(cases, None, self._labelled_only_home(cases, folder),
                                     self.config.final, 98, record)
        self._score_holdout(self._nnunet_engine(cases.sequence, model, profile), cases, folder,
                            record)
        record.companions = self._companions(cases, record, folder / "labels", folder)
        record.seconds = round(time.perf_counter() - started, 1)
        return write_record(folder, record), model

    def _labelled_only_home(self, cases: SequenceCases, folder: Path) -> Path:
        """Where the labelled-only model trains: in round 0's folder when the fused round 0
        trained the same model there (same cases, same schedule), which is then found finished."""
        count = len(cases.labelled)
        if self._fuses(cases) and self.config.final.resolve(count) == self.config.intermediate.resolve(count):
            return self.step_dir(cases.sequence, "round_00") / "labelled_only"
        return folder

    def _companions(self, cases: SequenceCases, record: StepRecord, labels_dir: Path,
                    folder: Path) -> list[str]:
        """The final model's training set again, for each of ``final.extra_configurations``
        (e.g. a 2d model, which process.py prefers on CPU); returns their model folders."""
        extras = self.config.final.extra_configurations
        if not extras:
            return []
        labelled = {s.case: s for s in cases.labelled}
        rebuilt = rebuild_training_set(cases, record.trained_on or [], labels_dir)
        training = with_labelled_share([s for s in rebuilt if s.case in labelled],
                                       [s for s in rebuilt if s.case not in labelled],
                                       self.config.pseudo_labels.labelled_share)
        profile = self.config.final.resolve(len(training))
        ignore = (self.config.pseudo_labels.ignore_uncertainty_above is not None
                  and len(training) > len(labelled))
        models = []
        for configuration in extras:
            log.info("%s final: companion %s model on the same %d case(s)", cases.sequence,
                     configuration, len(training))
            models.append(str(fit_nnunet(
                training, folder / f"nnunet_{configuration}", replace(profile, configuration=configuration),
                cases.sequence, self.config.loop.dataset_id, self.device, available_cpus(), ignore=ignore,
                executor=self.executor, seed=self.config.loop.seed + 99,
                label=f"{cases.sequence} final {configuration}", show_progress=self.progress)))
        return models

    # -- pieces -----------------------------------------------------------------------------
    def _train(self, cases: SequenceCases, pseudo_dir: Path | None, folder: Path, schedule,
               number: int, record: StepRecord, warm_start: Path | None = None
               ) -> tuple[Path, TrainingProfile]:
        """nnU-Net on labelled + kept pseudo labels from ``pseudo_dir`` (None: labelled only),
        from scratch or from the ``warm_start`` model's weights."""
        kept: list[Support] = []
        verdicts: list[Verdict] = []
        if pseudo_dir is not None:
            available = [Support(q.case, q.image, outputs_of(pseudo_dir, q, cases.sequence)[0],
                                 q.vendor) for q in cases.unlabelled]
            present = [s for s in available if s.mask.is_file()]
            # a round's predictions keep the organ of the labels its model trained on (round 0 has none)
            kept, verdicts = pseudo_labelled_cases(present, folder / "labels", self.config.pseudo_labels,
                                                   guide_dir=pseudo_dir.parent / "labels")
            missing = {s.case: "no pseudo label (labelling failed)" for s in available
                       if not s.mask.is_file()}
            record.dropped = {**missing, **{v.case: v.reason for v in verdicts if not v.kept}}
        training = with_labelled_share(cases.labelled, kept, self.config.pseudo_labels.labelled_share)
        if not training:
            raise SSLMedSAM2Error(f"{cases.sequence}: nothing to train on (no labelled case and "
                                  "every pseudo label was left out)")
        profile = schedule.resolve(len(training))
        check_folds(profile, len(training), f"the {cases.sequence} training set")
        record.pseudo_kept, record.pseudo_dropped = len(kept), len(record.dropped or {})
        copies = len(training) - len(cases.labelled) - len(kept)
        log.info("%s %s: nnU-Net %s (%s, folds %s) on %d case(s): %d labelled + %d pseudo "
                 "(%d left out)%s%s", cases.sequence, folder.name, profile.name,
                 profile.configuration, ",".join(profile.folds), len(training),
                 len(cases.labelled), len(kept), record.pseudo_dropped,
                 f" + {copies} labelled copies" if copies else "",
                 f", warm-started from {warm_start}" if warm_start else "")
        ignore = self.config.pseudo_labels.ignore_uncertainty_above is not None and bool(kept)
        model = fit_nnunet(training, folder / "nnunet", profile, cases.sequence,
                           self.config.loop.dataset_id, self.device, available_cpus(), ignore=ignore,
                           executor=self.executor, seed=self.config.loop.seed + number,
                           label=f"{cases.sequence} {folder.name}", show_progress=self.progress,
                           warm_start=warm_start)
        record.model, record.folds = str(model), list(profile.folds)
        record.trained_on = [c.case for c in cases.labelled + kept]
        return model, profile

    def _nnunet_engine(self, sequence: str, model: Path, profile: TrainingProfile) -> EngineRecipe:
        options = RuntimeOptions(device=self.config.loop.device, folds=tuple(profile.folds),
                                 tta=False)
        return partial(NnUNetEngine, self.run_dir, options, models={sequence: model},
                       with_uncertainty=True, announce=False)

    def _label(self, engine: EngineRecipe, queries: list[Query], out_dir: Path, sequence: str,
               largest_only: bool = False) -> list[str]:
        if not self.config.pseudo_labels.same_vendor_supports:
            queries = [replace(q, vendor=None) for q in queries]  # no vendor: every support
        labeller = CaseLabeller(engine, out_dir, sequence, largest_only, engine=self._local(engine))
        records = pseudo_label(labeller, queries, progress=self.progress, executor=self.executor,
                               desc=f"{sequence} {out_dir.parent.name} {out_dir.name}")
        return [r["case"] for r in records if r["status"] == "error"]

    def _local(self, recipe: EngineRecipe) -> Engine | None:
        """This process's engine for ``recipe`` when cases run here, built once per step."""
        if not self.executor.runs_here:
            return None
        if self._built is None or self._built[0] is not recipe:
            self._built = (recipe, recipe())
        return self._built[1]

    def _score_holdout(self, engine: EngineRecipe, cases: SequenceCases, folder: Path,
                       record: StepRecord) -> None:
        """Predict and score the held-out split with this step's model (or few-shot engine)."""
        if not cases.holdout:
            return
        # scored as process.py would deliver them: largest component only
        self._label(engine, cases.holdout, folder / "holdout", cases.sequence, largest_only=True)
        rows = []
        for query in cases.holdout:
            gt = cases.holdout_truth.get(query.case)
            if gt is None:
                continue
            pred = folder / "holdout" / query.case / f"{cases.sequence}.nii.gz"
            rows.append(evaluate_pair((query.case, cases.sequence), pred if pred.is_file() else None, gt))
        scored = [r for r in rows if r.dice is not None]
        if scored:
            record.holdout_dice_mean = round(float(np.mean([r.dice for r in scored])), 4)
            record.holdout_hd95_mean = round(float(np.mean([r.hd95 for r in scored])), 2)
            record.holdout_cases = len(scored)
        write_text_atomic(json.dumps([asdict(r) for r in rows], indent=2) + "\n",
                          folder / "holdout_metrics.json")


def change_between(previous: Path, current: Path, queries: list[Query],
                   sequence: str) -> tuple[float | None, float | None]:
    """Mean and minimum Dice between two rounds' pseudo labels (cases present in both)."""
    scores = []
    for query in queries:
        a, b = (folder / query.case / f"{sequence}.nii.gz" for folder in (previous, current))
        if a.is_file() and b.is_file():
            scores.append(mask_dice(a, b))
    if not scores:
        return None, None
    return round(float(np.mean(scores)), 4), round(float(np.min(scores)), 4)


def mask_dice(a: Path, b: Path) -> float:
    """Dice of two mask files on the same grid (any non-zero voxel is foreground)."""
    # copies, not views: a view of a temporary image reads freed memory (wrong Dice, or a crash)
    return dice(sitk.GetArrayFromImage(sitk.ReadImage(str(a))) > 0,
                sitk.GetArrayFromImage(sitk.ReadImage(str(b))) > 0)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def loop_summary(records: list[StepRecord]) -> list[dict[str, Any]]:
    """Report rows, without the bulky per-case fields."""
    bulky = ("dropped", "failed", "trained_on")
    return [{k: v for k, v in asdict(r).items() if k not in bulky} for r in records]

