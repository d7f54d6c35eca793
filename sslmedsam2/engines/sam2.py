"""SAM2 few-shot engine (TFFS-MedSAM2): labelled supports as SAM2 memory, no training.

Needs a SAM2 checkpoint in ``<weights>/sam2/`` (MedSAM2_latest.pt, or an official
sam2.1_hiera_*.pt) and supports in ``<weights>/supports/``. On a GPU it runs the paper's setting;
on a CPU, where that setting costs hours per volume, :meth:`TFFSConfig.cpu_practical` (an
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

from sslmedsam2.engines.base import RuntimeOptions, Segmentation
from sslmedsam2.errors import WeightsError
from sslmedsam2.fewshot.checkpoints import CHECKPOINTS, ResolvedCheckpoint, build_predictor, resolve_checkpoint
from sslmedsam2.fewshot.tffs import TFFSConfig, TFFSSegmenter
from sslmedsam2.runtime import device_precision, resolve_device
from sslmedsam2.orientation import reorient
from sslmedsam2.supports import Support, find_supports, load_support, same_vendor_first

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
    """One SAM2 predictor, and one prepared-support segmenter per support set (vendor)."""

    name = "sam2"

    def __init__(self, supports: list[Support], checkpoint: ResolvedCheckpoint | None,
                 options: RuntimeOptions = RuntimeOptions(), config: TFFSConfig | None = None,
                 weights_dir: Path | None = None, hydra_overrides: list[str] | None = None) -> None:
        self.supports = supports
        self.checkpoint = checkpoint
        self.options = options
        self.config = config
        self.weights_dir = weights_dir
        self.hydra_overrides = hydra_overrides
        self._predictor = None
        self._threads: int | None = None
        self._segmenters: dict[tuple[str, ...], TFFSSegmenter] = {}

    @classmethod
    def from_weights(cls, weights_dir: Path, options: RuntimeOptions) -> "Sam2Engine":
        try:
            checkpoint = resolve_checkpoint(weights_dir)
        except WeightsError:
            checkpoint = None  # no checkpoint: this engine steps aside for the next one
        return cls(find_supports(Path(weights_dir) / "supports"), checkpoint, options,
                   weights_dir=Path(weights_dir))

    def can_segment(self, sequence: str) -> bool:
        return bool(self.supports) and self.checkpoint is not None

    def missing(self, sequence: str) -> str:
        where = self.weights_dir or Path("<weights>")
        names = ", ".join(spec.filename for spec in CHECKPOINTS.values())
        return (f"a SAM2 checkpoint in {where}/sam2/ (one of {names}) and support cases in "
                f"{where}/supports/<case>/GED4.nii.gz with mask_GED4.nii.gz")

    def load(self, sequence: str) -> None:
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
        self._predictor = build_predictor(self.checkpoint, device, self.hydra_overrides)
        log.info("sam2 %s on %s in %s", self.checkpoint.spec.name, device, device_precision(device))

    def segment(self, image: sitk.Image, sequence: str, vendor: str | None = None) -> Segmentation:
        self.load(sequence)
        chosen = same_vendor_first(self.supports, vendor)
        key = tuple(s.case for s in chosen)
        with torch_threads(self._threads):
            if key not in self._segmenters:
                # supports in the orientation queries arrive in (see sslmedsam2.orientation)
                pairs = [tuple(reorient(v).image for v in load_support(s)) for s in chosen]
                self._segmenters[key] = TFFSSegmenter(self._predictor, pairs, self.config)
            result = self._segmenters[key].segment(image)
        used = key[: self.config.max_supports] if self.config.max_supports else key
        return Segmentation(
            mask=result.mask, uncertainty=result.uncertainty,
            device=str(self._predictor.device), precision=device_precision(self._predictor.device),
            detail=f"sam2 {self.checkpoint.spec.name} supports={','.join(used)} "
                   f"insertions={self.config.insertions} encoder_frames={result.encoder_frames}")
