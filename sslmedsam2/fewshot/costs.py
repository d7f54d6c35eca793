"""What few-shot segmentation costs on this device, timed once so a time budget can plan queries.

A query's time is its slices through the image encoder plus, per video (support x insertion), its
slices and the support's tracked through SAM2's memory (see ``sslmedsam2.container.budget``). Both rates are
measured on a short probe made from a real support, so that the memory attention sees as many
prompted support slices as real queries do.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import SimpleITK as sitk
import torch

from sslmedsam2.container.budget import FewShotCosts
from sslmedsam2.fewshot.preprocess import axial_axis, volume_frames
from sslmedsam2.fewshot.propagation import EncodedFrames
from sslmedsam2.fewshot.tffs import TFFSConfig, TFFSSegmenter


def query_slices(image: sitk.Image) -> int:
    """How many frames few-shot segmentation makes of ``image`` (its axial slices)."""
    return image.GetSize()[::-1][axial_axis(image)]


def probe_query(image: sitk.Image, mask: sitk.Image, slices: int) -> sitk.Image:
    """``slices`` consecutive axial slices of a support around its largest liver cross-section."""
    axis = axial_axis(image)
    area = np.moveaxis(sitk.GetArrayViewFromImage(mask) > 0, axis, 0)
    area = area.reshape(area.shape[0], -1).sum(axis=1)
    count = min(slices, len(area))
    start = int(np.clip(np.argmax(area) - count // 2, 0, len(area) - count))
    index = [slice(None)] * 3
    index[2 - axis] = slice(start, start + count)  # sitk indexes (x, y, z)
    return image[tuple(index)]


def measure_costs(predictor: torch.nn.Module, support: tuple[sitk.Image, sitk.Image],
                  config: TFFSConfig, slices: int = 2) -> FewShotCosts:
    """Seconds per encoded and per tracked slice: a few slices of the support segmented from the
    whole support with one insertion, once to warm up and cache the support (a real run does that
    once per support), then timed; the encoder's share is timed apart."""
    query = probe_query(*support, slices)
    segmenter = TFFSSegmenter(predictor, [support], replace(config, insertions=1, max_supports=1))
    segmenter.segment(query)
    frames = volume_frames(query, predictor.image_size, config.preprocess).tensor
    started = time.perf_counter()
    EncodedFrames.encode(predictor, frames, config.encoder_batch_size)
    _synchronize(predictor)
    encode_s = (time.perf_counter() - started) / len(frames)
    started = time.perf_counter()
    segmenter.segment(query)
    _synchronize(predictor)
    propagation_s = max(time.perf_counter() - started - encode_s * len(frames), 0.0)
    prepared = segmenter.supports[0]
    tracked = len(frames) + int((~prepared.nonempty).sum())
    return FewShotCosts(encode_s=encode_s, track_s=propagation_s / tracked)


def _synchronize(predictor: torch.nn.Module) -> None:
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
