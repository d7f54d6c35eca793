"""SAM2 few-shot engine (TFFS-MedSAM2): labelled supports as SAM2 memory, no training.

Needs a SAM2 checkpoint in ``<weights>/sam2/`` (MedSAM2_latest.pt, an official
sam2.1_hiera_*.pt, or any SAM 2 / 2.1 file, recognised by its content; verified when the engine
is made, before any case) and supports in ``<weights>/supports/``. On a GPU it runs the paper's
setting; on a CPU, where that setting costs hours per volume, :meth:`TFFSConfig.cpu_practical` (an
approximation, not quality-checked without real weights) unless a config is given, with
``CPU_THREADS`` torch threads unless ``RuntimeOptions.threads`` says otherwise.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import SimpleITK as sitk
import torch

from sslmedsam2.container.budget import FewShotCosts, FewShotPlan, plan_fewshot
from sslmedsam2.engines.base import RuntimeOptions, Segmentation
from sslmedsam2.errors import WeightsError
from sslmedsam2.fewshot.checkpoints import (
    ResolvedCheckpoint,
    build_predictor,
    checkpoint_files,
    verify_checkpoint,
)
from sslmedsam2.fewshot.costs import measure_costs, query_slices
from sslmedsam2.fewshot.tffs import TFFSConfig, TFFSSegmenter
from sslmedsam2.orientation import reorient
from sslmedsam2.runtime import device_precision, resolve_device
from sslmedsam2.supports import Support, load_support, same_vendor_first, weights_supports

log = logging.getLogger(__name__)

#: SAM2's CPU default: on the shared 2-core box one thread ran 1.7-4x faster than two whenever
#: another job was running, and two would gain at most about 1.8x on an idle one (fewshot/README.md,
#: "Threads on CPU").
CPU_THREADS = 1


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` inside the block (None: unchanged), then
    restored, so that the other engines of the process keep theirs."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Sam2Engine:
    """One SAM2 predictor, and one prepared-support segmenter per support set (vendor).

    ``broken`` is the verification error of a checkpoint that is present but unusable: the
    engine then claims the sequences it would serve and fails them with that error, so a bad
    file is never silently replaced by the next engine."""

    name = "sam2"

    def __init__(self, supports: list[Support], checkpoint: ResolvedCheckpoint | None,
                 options: RuntimeOptions = RuntimeOptions(), config: TFFSConfig | None = None,
                 weights_dir: Path | None = None, hydra_overrides: list[str] | None = None,
                 broken: WeightsError | None = None) -> None:
        self.supports = supports
        self.checkpoint = checkpoint
        self.broken = broken
        self.options = options
        self.config = config
        self.weights_dir = weights_dir
        self.hydra_overrides = hydra_overrides
        self._predictor = None
        self._threads: int | None = None
        self._segmenters: dict[tuple[str, ...], TFFSSegmenter] = {}
        self._costs: FewShotCosts | None = None

    @classmethod
    def from_weights(cls, weights_dir: Path, options: RuntimeOptions) -> "Sam2Engine":
        """The engine of a weights folder, its checkpoint verified now (once per run). Without
        a checkpoint file it steps aside for the next engine; a broken one is logged here."""
        files = checkpoint_files(weights_dir)
        checkpoint, broken = None, None
        if files:
            try:
                checkpoint = verify_checkpoint(files[0])
            except WeightsError as error:
                log.error("%s", error)
                broken = error
        return cls(weights_supports(weights_dir), checkpoint, options,
                   weights_dir=Path(weights_dir), broken=broken)

    def can_segment(self, sequence: str) -> bool:
        return bool(self.supports) and (self.checkpoint is not None or self.broken is not None)

    def missing(self, sequence: str) -> str:
        where = self.weights_dir or Path("<weights>")
        return (f"a SAM2 checkpoint in {where}/sam2/ (MedSAM2_latest.pt, sam2.1_hiera_*.pt or "
                f"any SAM 2 / 2.1 file) and support cases in "
                f"{where}/supports/<case>/<SEQ>.nii.gz with mask_<SEQ>.nii.gz")

    def load(self, sequence: str) -> None:
        if self.broken is not None:  # a fresh exception each time: tracebacks do not pile up
            raise WeightsError(str(self.broken))
        if self._predictor is not None:
            return
        device = resolve_device(self.options.device)
        if device.type == "cpu":
            self._threads = self.options.threads or CPU_THREADS
            log.info("sam2 on CPU: %d torch thread(s) (--threads sets them)", self._threads)
        if self.config is None:
            self.config = TFFSConfig() if device.type == "cuda" else TFFSConfig.cpu_practical()
            if device.type != "cuda":
                log.warning("sam2 on CPU: CPU-practical setting (%s supports x %s insertions, every "
                            "%s-th support slice), an approximation of the paper's GPU setting",
                            self.config.max_supports, self.config.insertions,
                            self.config.support_stride)
        try:
            self._predictor = build_predictor(self.checkpoint, device, self.hydra_overrides)
        except WeightsError as error:  # the same line for every later case, without retrying
            self.broken = error
            raise
        log.info("sam2 %s on %s in %s (%s)", self.checkpoint.spec.name, device,
                 device_precision(device), self.checkpoint.describe())
        if self.options.time_budget is not None:
            self._time_costs()

    def _time_costs(self) -> None:
        """Seconds per encoded and tracked slice here, for the budget; never fatal."""
        try:
            with torch_threads(self._threads):
                pair = tuple(reorient(v).image for v in load_support(self.supports[0]))
                self._costs = measure_costs(self._predictor, pair, self.config)
        except Exception as exc:  # the estimate must never cost a case its mask
            log.warning("sam2: could not time a probe (%s: %s); the time budget is not applied",
                        type(exc).__name__, str(exc)[:200])
        else:
            log.info("sam2: %.3f s per encoded slice, %.3f s per tracked slice; per-case budget "
                     "%.0f s", self._costs.encode_s, self._costs.track_s, self.options.time_budget)

    def over_budget(self, image: sitk.Image, sequence: str, vendor: str | None = None) -> str | None:
        plan = self._plan(image, sequence, vendor)
        if plan.fits:
            return None
        return f"{plan.degraded[0]}; even {plan.describe()} needs est. {plan.estimate_s:.0f} s"

    def segment(self, image: sitk.Image, sequence: str, vendor: str | None = None) -> Segmentation:
        plan = self._plan(image, sequence, vendor)
        if plan.degraded:
            log.warning("sam2 %s: %s", sequence, "; ".join(plan.degraded))
        key, segmenter = self._segmenter(vendor)
        with torch_threads(self._threads):
            result = segmenter.segment(image, plan.supports, plan.insertions)
        detail = (f"sam2 {self.checkpoint.spec.name} supports={','.join(key[:plan.supports])} "
                  f"insertions={plan.insertions} encoder_frames={result.encoder_frames}")
        if self._costs is not None:
            detail += f" est={plan.estimate_s:.0f}s"
        if plan.degraded:
            detail += " [time budget: " + "; ".join(plan.degraded[1:]) + "]"
        detail += f" checkpoint={self._checkpoint_text()}"
        return Segmentation(
            mask=result.mask, uncertainty=result.uncertainty, probability=result.probability,
            device=str(self._predictor.device), precision=device_precision(self._predictor.device),
            detail=detail)

    def _checkpoint_text(self) -> str:
        """What served the case, for its record: ``MedSAM2_latest.pt, official, sha256 ok``."""
        identity = self.checkpoint.identity
        return identity.short() if identity is not None else "none (random weights)"

    def _segmenter(self, vendor: str | None) -> tuple[tuple[str, ...], TFFSSegmenter]:
        """The prepared supports for ``vendor`` (its own first), made at first use."""
        chosen = same_vendor_first(self.supports, vendor)[: self.config.max_supports]
        key = tuple(s.case for s in chosen)
        if key not in self._segmenters:
            with torch_threads(self._threads):
                # supports in the orientation queries arrive in (see sslmedsam2.orientation)
                pairs = [tuple(reorient(v).image for v in load_support(s)) for s in chosen]
                self._segmenters[key] = TFFSSegmenter(self._predictor, pairs, self.config)
        return key, self._segmenters[key]

    def _plan(self, image: sitk.Image, sequence: str, vendor: str | None) -> FewShotPlan:
        """The config's supports and insertions, cut down to the time budget when one is set."""
        self.load(sequence)
        _, segmenter = self._segmenter(vendor)
        supports = segmenter.supports
        return plan_fewshot(
            query_slices(image), [int((~s.nonempty).sum()) for s in supports],
            segmenter.uncached_slices(), self.config.insertions,
            self._costs or FewShotCosts(0.0, 0.0),
            self.options.time_budget if self._costs is not None else None)
