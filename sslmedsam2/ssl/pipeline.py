"""``sslmedsam2 train``: the whole semi-supervised run, from a CARE training folder to ``weights/``.

Run folder: ``config.json`` (resolved config; a rerun with another config is refused),
``provenance.json`` (versions, device, seed), ``<SEQ>/<step>/`` (see ``loop``), ``report/``
(per-round table as CSV and JSON, overlay montages round by round) and, unless told otherwise,
``weights/``: the final models exactly as ``process.py`` reads them, the labelled GED4 cases as
supports for the few-shot fallback, and a manifest with every file's checksum.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from sslmedsam2 import __version__
from sslmedsam2.datasets import read_collection
from sslmedsam2.engines import AVERAGED_ENGINES, DEFAULT_ENGINES
from sslmedsam2.errors import UsageError
from sslmedsam2.evaluation.folders import aligned_table
from sslmedsam2.evaluation.montage import save_overlay_montage
from sslmedsam2.executors import Executor
from sslmedsam2.io import read_volume, volume_suffix, write_text_atomic
from sslmedsam2.logs import FILE_ONLY
from sslmedsam2.manifest import write_manifest
from sslmedsam2.orientation import CANONICAL
from sslmedsam2.registration.syn import pin_registration_threads
from sslmedsam2.runtime import configure_threads
from sslmedsam2.ssl.config import SSLConfig, default_values
from sslmedsam2.ssl.export_choice import read_choice
from sslmedsam2.ssl.loop import SERVED, SemiSupervisedRun, StepRecord, loop_summary
from sslmedsam2.supports import WEIGHTS_SUPPORTS_DIR, Support
from sslmedsam2.training.supervised import export_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    records: list[StepRecord]
    weights_dir: Path
    report_dir: Path


def run_ssl(config: SSLConfig, run_dir: Path, weights_dir: Path | None = None,
            progress: bool = True, executor: Executor | None = None) -> RunResult:
    """Run (or resume) every sequence's loop, then report and export. Returns what was made.
    Cases and folds run on ``executor`` (default: this process)."""
    run_dir = Path(run_dir)
    started = time.perf_counter()
    record_provenance(config, run_dir)
    pin_registrations(config)
    configure_threads(None)
    run = SemiSupervisedRun(config, run_dir, progress=progress, executor=executor)
    records: list[StepRecord] = []
    models: dict[str, tuple[Path, StepRecord]] = {}
    for sequence in config.data.sequences:
        sequence_records, model = run.run_sequence(sequence)
        records += sequence_records
        models[sequence] = (model, sequence_records[-1])
    weights = export_weights(run, models, records, Path(weights_dir or run_dir / "weights"))
    records += served_scores(run, models, weights)
    report_dir = write_report(run, records)
    log.info("semi-supervised run finished in %.0f s: weights in %s, report in %s",
             time.perf_counter() - started, weights, report_dir)
    return RunResult(records, weights, report_dir)


def pin_registrations(config: SSLConfig) -> None:
    """``loop.deterministic_registration``: before ANTs loads here or in a process started from
    here (a Ray instance started on this machine included)."""
    if config.loop.deterministic_registration and not pin_registration_threads():
        log.warning("ants was loaded before this run, on ITK's default threads: a rerun's "
                    "pseudo labels may differ from this run's")


def record_provenance(config: SSLConfig, run_dir: Path) -> None:
    """Write the resolved config and the software versions; refuse a run folder started with a
    different config (mixing two experiments in one folder would corrupt both)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = config.to_dict()
    config_path = run_dir / "config.json"
    if config_path.is_file():
        changed = config_changes(json.loads(config_path.read_text()), resolved)
        if changed:
            raise UsageError(f"{run_dir} was started with another config (differs in "
                             f"{', '.join(changed)}); use a new --run folder or the original config")
    else:
        write_text_atomic(json.dumps(resolved, indent=2) + "\n", config_path)
    if config.source is not None:
        shutil.copyfile(config.source, run_dir / "config.toml")
    provenance = {"sslmedsam2": __version__, "python": platform.python_version(),
                  "platform": platform.platform(), "seed": config.loop.seed,
                  "packages": _versions("torch", "nnunetv2", "SimpleITK", "sam2", "numpy"),
                  "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA")}
    history = run_dir / "provenance.json"
    entries = json.loads(history.read_text()) if history.is_file() else []
    entries.append({**provenance, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    write_text_atomic(json.dumps(entries, indent=2) + "\n", history)


def config_changes(previous: dict[str, Any], resolved: dict[str, Any]) -> list[str]:
    """``section.key`` entries that differ. A key the previous run did not know (added in a later
    sslmedsam2) counts as unchanged while it holds its default, so upgrades can resume runs."""
    defaults = default_values()
    changed = []
    for section, values in resolved.items():
        for key, value in values.items():
            before = previous.get(section, {}).get(key, defaults[section].get(key))
            if before != value:
                changed.append(f"{section}.{key}")
    return sorted(changed)


def _versions(*names: str) -> dict[str, str | None]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


REPORT_COLUMNS = ("sequence", "step", "engine", "labelled", "pseudo_kept", "pseudo_dropped",
                  "change_dice_mean", "change_dice_min", "labelled_dice_mean", "holdout_dice_mean",
                  "holdout_hd95_mean", "holdout_cases", "based_on", "export", "seconds")


def write_report(run: SemiSupervisedRun, records: list[StepRecord]) -> Path:
    """``report/rounds.csv`` and ``rounds.json``, and per-sequence overlay montages."""
    report = run.run_dir / "report"
    rows = loop_summary(records)
    write_text_atomic(json.dumps(rows, indent=2) + "\n", report / "rounds.json")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(buffer.getvalue(), report / "rounds.csv")
    for sequence in run.config.data.sequences:
        steps = [r.step for r in records if r.sequence == sequence and r.step != "final"]
        # the run has checked the collection already: read it again quietly
        unlabelled = read_collection(run.config.data.train, sequence, run.config.data.layout).unlabelled
        cases = unlabelled[: run.config.loop.montage_cases]
        for query in cases:
            masks = {}
            for step in steps:
                path = run.step_dir(sequence, step) / "pseudo" / query.case / f"{sequence}.nii.gz"
                if path.is_file():
                    masks[step.replace("_", " ")] = sitk.ReadImage(str(path))
            if masks:
                save_overlay_montage(read_volume(query.image), masks,
                                     report / f"montage_{sequence}_{query.case}.png", n_slices=4,
                                     title=f"{query.case} {sequence}: pseudo labels by round")
    choices = [asdict(c) for c in (read_choice(run, s) for s in run.config.data.sequences) if c]
    if choices:
        write_text_atomic(json.dumps(choices, indent=2) + "\n", report / "export_choice.json")
    log.info("report: %s", report / "rounds.csv", extra=FILE_ONLY)  # the run's last line says it
    return report


def read_choices(report_dir: Path) -> list[dict[str, Any]]:
    """The export decisions a run's report holds (``export_choice.json``), one per sequence."""
    path = Path(report_dir) / "export_choice.json"
    return json.loads(path.read_text()) if path.is_file() else []


def pseudo_label_source(config: SSLConfig) -> str:
    """What made round 0's labels, for the manifest: the engine and, for SAM2, what its
    checkpoint is by content ("MedSAM2_latest.pt, official, sha256 ok: ...")."""
    labels = config.pseudo_labels
    if labels.engine == "atlas":
        vote = "weighted vote" if labels.atlas_weighting else "vote"
        return f"atlas ({labels.atlas_method}, {vote}{' + intensity' if labels.atlas_intensity else ''})"
    if labels.engine != "sam2" or labels.checkpoint is None:
        return labels.engine
    from sslmedsam2.fewshot.identity import identify_checkpoint

    return f"sam2, {identify_checkpoint(labels.checkpoint).describe()}"


def export_weights(run: SemiSupervisedRun, models: dict[str, tuple[Path, StepRecord]],
                   records: list[StepRecord], weights_dir: Path) -> Path:
    """Assemble the deployable weights folder beside the target, then swap it in whole."""
    staging = weights_dir.with_name(f".{weights_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    exported = {}
    for sequence, (model, final) in models.items():
        provenance = {"run": str(run.run_dir), "step": final.step, "trained_on": final.trained_on}
        targets = [export_model(Path(folder), staging, sequence, tuple(final.folds or ()), provenance)
                   for folder in [model, *(final.companions or [])]]
        exported[sequence] = {"models": [str(t.relative_to(staging)) for t in targets],
                              "export": final.export,
                              "folds": final.folds, "trained_on": final.trained_on,
                              "rounds": [r.step for r in records if r.sequence == sequence],
                              # how well the model learned its pseudo labels (AverageEngine reads it)
                              "teacher_agreement": final.change_dice_mean}
    copy_supports(run.supports, staging / WEIGHTS_SUPPORTS_DIR, run.labelled_sequence)
    engines = served_engines(run)
    write_manifest(staging, {
        "sslmedsam2": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": str(run.run_dir), "config": run.config.to_dict(), "models": exported,
        "supports": [s.case for s in run.supports], "orientation": CANONICAL,
        "engines": list(engines),
        "pseudo_labels": pseudo_label_source(run.config), "report": loop_summary(records)})
    old = weights_dir.with_name(f".{weights_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if weights_dir.exists():
        os.replace(weights_dir, old)
    os.replace(staging, weights_dir)
    shutil.rmtree(old, ignore_errors=True)
    log.info("weights exported to %s (%s); process.py tries %s", weights_dir, ", ".join(exported),
             ",".join(engines), extra=FILE_ONLY)
    return weights_dir


def served_engines(run: SemiSupervisedRun) -> tuple[str, ...]:
    """The chain the exported weights ask process.py for: the model averaged with the atlas
    (``loop.serve_average``) where there are supports to register."""
    return AVERAGED_ENGINES if run.config.loop.serve_average and run.supports else DEFAULT_ENGINES


def served_scores(run: SemiSupervisedRun, models: dict[str, tuple[Path, StepRecord]],
                  weights: Path) -> list[StepRecord]:
    """The held-out split scored as the exported weights are served, where that is more than the
    model alone: the supports' sequence, averaged with the atlas."""
    sequence = run.labelled_sequence
    if served_engines(run) != AVERAGED_ENGINES or sequence not in models:
        return []
    record = run.score_served(sequence, weights, models[sequence][1])
    return [record] if record else []


def copy_supports(supports: list[Support], target: Path, sequence: str) -> None:
    """Labelled cases as ``supports/Vendor_X/<case>/<SEQ>`` + ``mask_<SEQ>`` whatever their
    names in the collection: the container's few-shot fallback for sequences without a model,
    with vendors kept for same-vendor support choice."""
    for support in supports:
        folder = target / (f"Vendor_{support.vendor}" if support.vendor else "") / support.case
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(support.image, folder / f"{sequence}{volume_suffix(support.image)}")
        shutil.copyfile(support.mask, folder / f"mask_{sequence}{volume_suffix(support.mask)}")


def run_summary_table(records: list[StepRecord]) -> str:
    """The per-round table as aligned text, for the end of the command's log; the step each
    sequence exports is marked with *."""
    rows = [["sequence", "step", "engine", "train", "change Dice", "labelled fit", "held-out Dice",
             "HD95 mm", "s"]]
    rows += [[r.sequence, _step_label(r, records), r.engine,
              f"{r.labelled}+{r.pseudo_kept}", _cell(r.change_dice_mean), _cell(r.labelled_dice_mean),
              _cell(r.holdout_dice_mean), _cell(r.holdout_hd95_mean, 1), f"{r.seconds:.0f}"]
             for r in records]
    return "\n".join(aligned_table(rows))


def _step_label(record: StepRecord, records: list[StepRecord]) -> str:
    label = record.step if not record.based_on else f"{record.step} ({record.based_on})"
    last = [r for r in records if r.sequence == record.sequence and r.step != SERVED][-1]
    return f"{label} *" if record is last else label


def _cell(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
