"""TFFS-MedSAM2 for one query volume: supports x insertions videos, averaged, thresholded.

Defaults are the paper's setting (5 insertions, all supports, every support slice, full
conditioning-frame attention). That is a GPU setting: on CPU each tracked query frame attends to
every prompted support slice. ``TFFSConfig.cpu_practical`` trades exactness for speed and is an
*approximation* of the paper that no one has quality-checked with real weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
import torch

from sslmedsam2.fewshot.cache import TensorCache
from sslmedsam2.fewshot.preprocess import (
    Frames,
    PreprocessConfig,
    mask_slices,
    resize_masks,
    to_volume_order,
    volume_frames,
)
from sslmedsam2.fewshot.propagation import (
    EncodedFrames,
    EncoderCounter,
    VideoInputs,
    cond_frame_limit,
    prompt_outputs,
    propagate_video,
)
from sslmedsam2.fewshot.videos import plan_videos
from sslmedsam2.postprocess import binary_entropy, largest_component

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TFFSConfig:
    """How a query is segmented few-shot.

    ``cache_encoder``: encode each unique slice once (query slices once per query, support slices
    once per ``TFFSSegmenter``) and run SAM2 on each prompted support slice once per query
    in-plane size; exact. False re-encodes every frame and re-prompts every support slice of
    every video like the authors' code, kept for comparison and benchmarks. ``cache_limit_mb``:
    bound on the support caches kept across queries (least recently used go first, then are
    recomputed, once per query: still exact). ``insert_after_last``: insertion positions from
    0..Q (True) or the authors' 0..Q-1 (see ``videos``). ``max_supports``: use only the
    first N supports. ``support_stride``: keep every k-th support slice (approximation).
    ``max_cond_frames_in_attn``: SAM2's limit on prompted frames attended per tracked frame
    (approximation; None keeps the model's setting, -1 = all, the paper's).
    """

    insertions: int = 5
    insert_after_last: bool = True
    seed: int = 0
    threshold: float = 0.5
    max_supports: int | None = None
    support_stride: int = 1
    max_cond_frames_in_attn: int | None = None
    cache_encoder: bool = True
    cache_limit_mb: float = 8192
    encoder_batch_size: int = 8
    preprocess: PreprocessConfig = PreprocessConfig()

    def __post_init__(self) -> None:
        if self.insertions < 1 or self.support_stride < 1 or self.encoder_batch_size < 1:
            raise ValueError("insertions, support_stride and encoder_batch_size must be >= 1")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.cache_limit_mb < 0:
            raise ValueError(f"cache_limit_mb must be >= 0, got {self.cache_limit_mb}")
        if self.max_supports is not None and self.max_supports < 1:
            raise ValueError(f"max_supports must be >= 1 or None, got {self.max_supports}")
        limit = self.max_cond_frames_in_attn
        if limit is not None and limit != -1 and limit < 2:  # sam2 asserts >= 2 mid-propagation
            raise ValueError(f"max_cond_frames_in_attn must be -1 (all) or >= 2, got {limit}")

    @classmethod
    def cpu_practical(cls) -> "TFFSConfig":
        """A CPU-affordable approximation of the paper: 3 supports x 2 insertions, every 2nd
        support slice, at most 4 prompted frames in attention. Not equivalent to the paper."""
        return cls(insertions=2, max_supports=3, support_stride=2, max_cond_frames_in_attn=4)


@dataclass
class FewShotResult:
    """Outputs on the query's (z, y, x) grid: ``mask`` uint8 0/1, ``probability`` float32 mean of
    the sigmoid maps, ``uncertainty`` float32 binary entropy (bits, 0..1) of that mean."""

    mask: np.ndarray
    probability: np.ndarray
    uncertainty: np.ndarray
    maps: int
    encoder_frames: int
    encoder_calls: int
    memory_encoder_calls: int
    seconds: float


class TFFSSegmenter:
    """Supports prepared once, queries segmented one by one ("load once, predict per case").

    Support frames do not depend on the query (only their masks are resized to each query's
    in-plane size), so with ``cache_encoder`` their encodings are made at first use and reused by
    every query, every insertion and both directions; the outputs of their prompted slices are
    reused by every query of the same in-plane size. Both live in one ``TensorCache`` bounded by
    ``cache_limit_mb``. Memory at 512 px (measured): 7 MB per support slice (frames and
    features) plus 21 MB per support (positional encodings, shared by its slices), e.g. 3 GB for
    10 supports x 40 slices, and 0.2 MB per prompted slice per query size. Each query draws its insertion positions from a fresh
    ``default_rng(seed)``, so a query's result does not depend on which queries came before it
    (resumable, shardable runs).
    """

    def __init__(
        self,
        predictor: torch.nn.Module,
        supports: list[tuple[sitk.Image, sitk.Image]],
        config: TFFSConfig = TFFSConfig(),
    ) -> None:
        self.predictor = predictor
        self.config = config
        self.cache = TensorCache(int(config.cache_limit_mb * 2**20))
        if getattr(predictor, "fill_hole_area", 0):
            log.warning(
                "predictor.fill_hole_area=%s alters SAM2's outputs; build it with "
                "fewshot.checkpoints.build_predictor (sets 0) for the method's exact outputs",
                predictor.fill_hole_area,
            )
        self.supports: list[PreparedSupport] = []
        for number, (image, mask) in enumerate(supports[: config.max_supports]):
            prepared = prepare_support(predictor, image, mask, config)
            if prepared is None:
                log.warning("support %d has no liver on its (kept) slices; skipped", number)
            else:
                self.supports.append(prepared)
        if not self.supports:
            raise ValueError("no support has a non-empty mask: nothing to segment queries from")

    def segment(self, query: sitk.Image, supports: int | None = None,
                insertions: int | None = None) -> FewShotResult:
        """Mask, mean probability and uncertainty of ``query`` on its own (z, y, x) grid, from
        the first ``supports`` supports with ``insertions`` videos each (default: the config's;
        fewer when a time budget says so)."""
        started = time.perf_counter()
        config, predictor = self.config, self.predictor
        insertions = insertions or config.insertions
        rng = np.random.default_rng(config.seed)
        counter = EncoderCounter()
        query_frames = volume_frames(query, predictor.image_size, config.preprocess)
        total = torch.zeros((len(query_frames.tensor), *query_frames.size), dtype=torch.float32)
        maps = 0
        limit = cond_frame_limit(predictor, config.max_cond_frames_in_attn)
        with counter.watching(predictor), limit:
            query_encoded = _maybe_encode(predictor, query_frames.tensor, config)
            for number, support in enumerate(self.supports[:supports]):
                # prompts are the masks at the query's size, so emptiness is judged there too
                masks = resize_masks(support.masks, query_frames.size)
                nonempty = masks.reshape(len(masks), -1).any(axis=1)
                if not nonempty.any():
                    log.warning("support %d vanishes at the query's in-plane size; skipped", number)
                    continue
                inputs = VideoInputs(
                    query=query_frames.tensor,
                    support=support.frames,
                    support_masks=masks,
                    video_size=query_frames.size,
                    query_encoded=query_encoded,
                )
                if config.cache_encoder:
                    inputs = self._with_support_caches(inputs, number)
                for video in plan_videos(
                    len(query_frames.tensor), nonempty, insertions, rng,
                    config.insert_after_last,
                ):
                    total += torch.sigmoid(propagate_video(predictor, video, inputs))
                    maps += 1
        if maps == 0:
            raise ValueError("every support mask vanishes at the query's in-plane size")
        return _finish(total / maps, query_frames, config, counter, maps, started)

    def uncached_slices(self) -> list[int]:
        """Per support, the slices the next query would have to encode (0 once cached)."""
        return [0 if ("encoded", number) in self.cache else len(support.frames)
                for number, support in enumerate(self.supports)]

    def _with_support_caches(self, inputs: VideoInputs, number: int) -> VideoInputs:
        """``inputs`` with support ``number``'s encodings and prompt outputs, from the cache or
        made now (once per query when the bound does not keep them)."""
        predictor, batch_size = self.predictor, self.config.encoder_batch_size
        encoded = self.cache.get(
            ("encoded", number),
            lambda: EncodedFrames.encode(predictor, inputs.support, batch_size),
        )
        prompts = self.cache.get(
            ("prompts", number, inputs.video_size),
            lambda: prompt_outputs(predictor, encoded, inputs.support_masks, inputs.video_size),
        )
        return replace(inputs, support_encoded=encoded, support_prompts=prompts)


@dataclass
class PreparedSupport:
    """One support volume as frames (N, 3, S, S) and masks (N, h, w) at its own in-plane size,
    after ``support_stride``."""

    frames: torch.Tensor
    masks: np.ndarray

    @property
    def nonempty(self) -> np.ndarray:
        """Which slices carry liver, i.e. get a mask prompt."""
        return self.masks.reshape(len(self.masks), -1).any(axis=1)


def prepare_support(
    predictor: torch.nn.Module, image: sitk.Image, mask: sitk.Image, config: TFFSConfig
) -> PreparedSupport | None:
    """Frames and masks of one support; None if its mask is empty."""
    if mask.GetSize() != image.GetSize():
        raise ValueError(
            f"support mask size {mask.GetSize()} differs from its image's {image.GetSize()}"
        )
    support = volume_frames(image, predictor.image_size, config.preprocess)
    masks = mask_slices(mask, support.axis, support.size)
    keep = slice(None, None, config.support_stride)
    frames, masks = support.tensor[keep], masks[keep]
    if not masks.any():
        return None
    return PreparedSupport(frames, masks)


def segment_query(
    predictor: torch.nn.Module,
    query: sitk.Image,
    supports: list[tuple[sitk.Image, sitk.Image]],
    config: TFFSConfig = TFFSConfig(),
) -> FewShotResult:
    """Segment ``query`` from labelled ``supports`` (image, mask) pairs by random whole insert.

    One-off form of ``TFFSSegmenter``: its counts include the supports (encoded at first use)
    and its seconds their preparation. Supports whose mask is empty are skipped; ValueError when
    none is usable.
    """
    started = time.perf_counter()
    result = TFFSSegmenter(predictor, supports, config).segment(query)
    return replace(result, seconds=time.perf_counter() - started)


def _maybe_encode(
    predictor: torch.nn.Module, frames: torch.Tensor, config: TFFSConfig
) -> EncodedFrames | None:
    """Encodings for the exact cache, or None: the predictor then encodes on demand (naive)."""
    if not config.cache_encoder:
        return None
    return EncodedFrames.encode(predictor, frames, config.encoder_batch_size)


def _finish(
    mean: torch.Tensor,
    query_frames: Frames,
    config: TFFSConfig,
    counter: EncoderCounter,
    maps: int,
    started: float,
) -> FewShotResult:
    """Threshold, keep the largest 3D component, back to the query's array order."""
    probability = to_volume_order(mean.numpy().astype(np.float32), query_frames.axis)
    mask = largest_component(probability > config.threshold)
    seconds = time.perf_counter() - started
    log.info(
        "few-shot query: %d maps, %d encoder frames in %d calls, %d memory-encoder calls, %.1f s",
        maps, counter.frames, counter.calls, counter.memory_calls, seconds,
    )
    return FewShotResult(
        mask=mask.astype(np.uint8),
        probability=np.ascontiguousarray(probability),
        uncertainty=binary_entropy(probability),
        maps=maps,
        encoder_frames=counter.frames,
        encoder_calls=counter.calls,
        memory_encoder_calls=counter.memory_calls,
        seconds=seconds,
    )
