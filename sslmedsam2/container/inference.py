"""The container's job: every volume in the input layout -> a mask on its exact grid.

One :class:`InferenceSettings` is built by the CLI/entrypoint; :func:`run_inference` detects the
layout, segments each job with the first engine that can serve its sequence, writes masks
atomically, logs one line per case and writes a JSON summary. A bad case is recorded and skipped;
the others are still written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from sslmedsam2.container.layouts import GrandChallengeSlugs, Job, detect_layout
from sslmedsam2.engines import Engine, RuntimeOptions, build_engines, manifest_engines
from sslmedsam2.errors import EngineUnavailableError, SSLMedSAM2Error
from sslmedsam2.io import read_volume, write_mask, write_text_atomic
from sslmedsam2.manifest import sole_sequence, verify_manifest
from sslmedsam2.orientation import CANONICAL, reorient, segment_reoriented
from sslmedsam2.postprocess import largest_component
from sslmedsam2.registration.syn import ITK_THREADS
from sslmedsam2.runtime import configure_threads
from sslmedsam2.sequences import GED4

log = logging.getLogger(__name__)

SUMMARY_NAME = "sslmedsam2-summary.json"


@dataclass(frozen=True)
class InferenceSettings:
    """Everything a run needs; nothing is read from the environment below this point."""

    input_path: Path
    output_dir: Path
    weights_dir: Path
    #: Tried in order per sequence: the first engine that can serve it segments it. None: the
    #: chain the weights' manifest asks for, else ``engines.DEFAULT_ENGINES``.
    engines: tuple[str, ...] | None = None
    runtime: RuntimeOptions = RuntimeOptions()
    #: CARE sequences to segment besides GED4; None = every sequence an engine can serve.
    sequences: tuple[str, ...] | None = None
    #: Sequence assumed for Grand Challenge and plain inputs, which do not name one; None: the
    #: weights' only sequence when their manifest has one (a model trained on a plain
    #: collection's "T2" serves plain T2 inputs), else GED4.
    default_sequence: str | None = None
    slugs: GrandChallengeSlugs = GrandChallengeSlugs()
    #: Keep only the largest connected component of each mask.
    largest_component: bool = True


@dataclass
class CaseRecord:
    case: str
    sequence: str
    input: str
    output: str | None
    engine: str | None
    seconds: float
    status: str  # "ok", "error" or "skipped"
    message: str = ""
    device: str | None = None
    precision: str | None = None
    #: the process's peak resident memory once this case was done
    peak_rss_mb: float | None = None


@dataclass
class RunSummary:
    layout: str
    records: list[CaseRecord] = field(default_factory=list)
    fatal: str | None = None
    #: every warning logged during the run, so a platform run can be diagnosed from its outputs
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.fatal:
            return 2
        return 1 if any(r.status == "error" for r in self.records) else 0

    def counts(self) -> dict[str, int]:
        counts = {"ok": 0, "error": 0, "skipped": 0}
        for record in self.records:
            counts[record.status] += 1
        return counts


def run_inference(settings: InferenceSettings) -> RunSummary:
    """Segment every job; never raises for a bad case, only records it."""
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    with collected_warnings(warnings):
        summary = _run_all(settings)
    summary.warnings = warnings
    write_summary(summary, settings)
    return summary


@contextlib.contextmanager
def collected_warnings(sink: list[str]) -> Iterator[None]:
    """Warnings and errors logged by sslmedsam2 while the block runs, appended to ``sink``."""
    class Collector(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            sink.append(f"{record.levelname}: {record.getMessage()}")

    handler = Collector(level=logging.WARNING)
    root = logging.getLogger("sslmedsam2")
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def _run_all(settings: InferenceSettings) -> RunSummary:
    try:
        plan = detect_layout(settings.input_path, settings.output_dir, settings.slugs)
    except SSLMedSAM2Error as exc:
        log.error("%s", exc)
        return RunSummary(layout="unknown", fatal=str(exc))
    try:
        manifest = verify_manifest(settings.weights_dir) or {}
    except SSLMedSAM2Error as exc:
        log.error("%s", exc)
        return RunSummary(layout=plan.name, fatal=str(exc))
    threads = configure_threads(settings.runtime.threads)
    orientation = manifest.get("orientation", CANONICAL)
    settings = replace(settings, default_sequence=settings.default_sequence or sole_sequence(manifest),
                       engines=settings.engines or manifest_engines(manifest))
    log.info("layout %s: %d volume(s) in %s; %d thread(s); models see volumes in %s orientation; "
             "engines %s", plan.name, len(plan.jobs), settings.input_path, threads, orientation,
             ",".join(settings.engines))
    summary = RunSummary(layout=plan.name)
    for problem in plan.problems:
        log.error("%s", problem)
        summary.records.append(CaseRecord(case=problem.path.name, sequence="", input=str(problem.path),
                                          output=None, engine=None, seconds=0.0, status="error",
                                          message=str(problem)))
    engines = build_engines(settings.engines, settings.weights_dir, settings.runtime)
    for index, job in enumerate(plan.jobs, start=1):
        record = _run_job(job, engines, settings, orientation, progress=f"[{index}/{len(plan.jobs)}]")
        summary.records.append(record)
    counts = summary.counts()
    log.info("done: %d ok, %d error(s), %d skipped", counts["ok"], counts["error"], counts["skipped"])
    return summary


def _run_job(job: Job, engines: list[Engine], settings: InferenceSettings, orientation: str,
             progress: str = "") -> CaseRecord:
    sequence = job.sequence or settings.default_sequence
    record = CaseRecord(case=job.case, sequence=sequence, input=str(job.input_path), output=None,
                        engine=None, seconds=0.0, status="ok")
    started = time.perf_counter()
    if not _requested(sequence, job, settings):
        record.status, record.message = "skipped", f"{sequence} not in --sequences"
        return record
    candidates = [e for e in engines if e.can_segment(sequence)]
    if not candidates and not _required(sequence, job, settings):
        record.status, record.message = "skipped", f"no model for {sequence}"
        log.info("%s case %s %s: skipped (no engine serves %s)", progress, job.case, sequence,
                 sequence)
        return record
    try:
        if not candidates:
            needs = "; or ".join(e.missing(sequence) for e in engines)
            raise EngineUnavailableError(f"{job.input_path}: no engine can segment {sequence}: "
                                         f"missing {needs}")
        candidates[0].load(sequence)  # once per sequence; logged apart, not part of the case's time
        started = time.perf_counter()
        image = read_volume(job.input_path)
        moved = reorient(image, orientation)
        engine = _affordable(candidates, moved.image, sequence, job.vendor)
        segmentation = segment_reoriented(engine, moved, sequence, job.vendor)
        mask = largest_component(segmentation.mask) if settings.largest_component else segmentation.mask
        write_mask(mask, image, job.output_path)
        record.output, record.engine = str(job.output_path), engine.name
        record.message = segmentation.detail
        record.device, record.precision = segmentation.device, segmentation.precision
    except SSLMedSAM2Error as exc:
        record.status, record.message = "error", str(exc)
    except Exception as exc:  # an engine crash must not lose the other cases
        record.status = "error"
        record.message = f"{job.input_path}: segmentation failed ({type(exc).__name__}: {exc})"
    record.seconds = round(time.perf_counter() - started, 3)
    record.peak_rss_mb = peak_rss_mb()
    if record.status == "ok":
        log.info("%s case %s %s: %s %.1f s [%s]", progress, job.case, sequence, record.engine,
                 record.seconds, record.message)
    else:
        log.error("%s %s", progress, record.message.splitlines()[0] if record.message else "error")
    return record


def _affordable(candidates: list[Engine], image, sequence: str, vendor: str | None) -> Engine:
    """The first engine that can segment ``image`` within the time budget; the last one serves
    whatever its cost, since a late mask beats none."""
    for engine, following in zip(candidates, candidates[1:]):
        engine.load(sequence)
        reason = engine.over_budget(image, sequence, vendor)
        if reason is None:
            return engine
        log.warning("%s %s: %s; %s serves this case instead", engine.name, sequence, reason,
                    following.name)
    return candidates[-1]


def _requested(sequence: str, job: Job, settings: InferenceSettings) -> bool:
    if settings.sequences is None or job.sequence is None or sequence == GED4:
        return True
    return sequence in settings.sequences


def _required(sequence: str, job: Job, settings: InferenceSettings) -> bool:
    """GED4, non-CARE inputs and explicitly requested sequences must be segmented."""
    if sequence == GED4 or job.sequence is None:
        return True
    return settings.sequences is not None and sequence in settings.sequences


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports kB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def write_summary(summary: RunSummary, settings: InferenceSettings) -> Path:
    """JSON provenance beside the outputs: settings, per-case records, counts."""
    path = settings.output_dir / SUMMARY_NAME
    payload = {
        "layout": summary.layout,
        "exit_code": summary.exit_code,
        "fatal": summary.fatal,
        "counts": summary.counts(),
        "peak_rss_mb": peak_rss_mb(),
        # "1": reruns repeat the atlas' registrations bit for bit
        "registration_threads": os.environ.get(ITK_THREADS, "ITK default"),
        "warnings": summary.warnings,
        "settings": json.loads(json.dumps(asdict(settings), default=str)),
        "cases": [asdict(r) for r in summary.records],
    }
    return write_text_atomic(json.dumps(payload, indent=2), path)
