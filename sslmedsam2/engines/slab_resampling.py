"""nnU-Net's resampling, run a slab of slices at a time so that a large volume fits in memory.

nnU-Net resamples whole volumes: its default function casts them to float64 and, for anisotropic
plans (CARE's 3.5 mm MR slices), builds a float64 coordinate grid over the whole output to pick
slices. On a 735 x 512 x 512 input that alone is several GB during preprocessing and again during
export. Those plans resample in-plane slice by slice and take the nearest slice along the
anisotropic axis, so every output slice depends on one input slice: we ask nnU-Net's own function
which input slice that is, then call the same function on slabs of those slices. The voxels are
the same as nnU-Net's; only the peak memory changes.

Isotropic plans (a true 3-D interpolation) and functions that blend slices along the anisotropic
axis keep nnU-Net's whole-volume call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

# float64 bytes of one slab's input, the working set nnU-Net's default function allocates per call
SLAB_BYTES = 64 * 2**20

Resampler = Callable[..., np.ndarray]


def in_slabs(function: Resampler, slab_bytes: int = SLAB_BYTES) -> Resampler:
    """``function`` (nnU-Net's ``(data, new_shape, current_spacing, new_spacing)`` signature,
    keyword arguments already bound) as a slab-wise resampler with the same output."""
    return partial(resample_in_slabs, function=function, slab_bytes=slab_bytes)


def resample_in_slabs(data, new_shape: Sequence[int], current_spacing: Sequence[float],
                      new_spacing: Sequence[float], *, function: Resampler,
                      slab_bytes: int = SLAB_BYTES) -> np.ndarray:
    """Resample ``data`` (c, x, y, z) like ``function`` does, a slab of output slices at a time."""
    new_shape = [int(s) for s in new_shape]
    if data is None or list(data.shape[1:]) == new_shape:
        return function(data, new_shape, current_spacing, new_spacing)
    if not isinstance(data, np.ndarray):  # a torch tensor from the predictor
        data = data.numpy()
    axis = separate_axis(function, current_spacing, new_spacing)
    sources = None if axis is None else source_slices(function, data.shape[1 + axis], new_shape,
                                                      axis, current_spacing, new_spacing)
    if sources is None:
        return function(data, new_shape, current_spacing, new_spacing)
    slice_bytes = 8 * data.shape[0] * data[0].size // data.shape[1 + axis]
    step = max(1, slab_bytes // max(slice_bytes, 1))
    out = None
    for start in range(0, len(sources), step):
        picked = sources[start:start + step]
        block = np.take(data, picked, axis=1 + axis)
        shape = list(new_shape)
        shape[axis] = len(picked)
        part = np.asarray(function(block, shape, current_spacing, new_spacing))
        if out is None:
            out = np.empty((data.shape[0], *new_shape), dtype=part.dtype)
        index = [slice(None)] * out.ndim
        index[1 + axis] = slice(start, start + len(picked))
        out[tuple(index)] = part
    return out


def separate_axis(function: Resampler, current_spacing: Sequence[float],
                  new_spacing: Sequence[float]) -> int | None:
    """The axis nnU-Net resamples on its own for these spacings, or None (3-D interpolation)."""
    from nnunetv2.configuration import ANISO_THRESHOLD
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    bound = function.keywords if isinstance(function, partial) else {}
    separate, axis = determine_do_sep_z_and_axis(
        bound.get("force_separate_z"), current_spacing, new_spacing,
        bound.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD))
    return int(axis) if separate and axis is not None else None


def source_slices(function: Resampler, count: int, new_shape: Sequence[int], axis: int,
                  current_spacing: Sequence[float], new_spacing: Sequence[float]) -> np.ndarray | None:
    """Which input slice ``function`` puts at each output slice along ``axis``, found by
    resampling the slice numbers themselves (a 1-pixel-wide volume); None when it blends slices."""
    probe_shape = [1, 1, 1]
    probe_shape[axis] = count
    target = [1, 1, 1]
    target[axis] = int(new_shape[axis])
    probe = np.arange(count, dtype=np.float32).reshape(1, *probe_shape)
    picked = np.asarray(function(probe, target, current_spacing, new_spacing), dtype=np.float64).ravel()
    whole = np.rint(picked)
    if picked.size != target[axis] or np.any(np.abs(picked - whole) > 1e-6) \
            or whole.min() < 0 or whole.max() >= count:
        return None
    return whole.astype(np.intp)


def slabwise_configuration(manager):
    """A copy of nnU-Net's ``ConfigurationManager`` whose three resampling functions (image in
    preprocessing, nonzero mask, logits at export) run slab by slab."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    class SlabwiseConfiguration(ConfigurationManager):
        @property
        def resampling_fn_data(self) -> Resampler:
            return in_slabs(super().resampling_fn_data)

        @property
        def resampling_fn_seg(self) -> Resampler:
            return in_slabs(super().resampling_fn_seg)

        @property
        def resampling_fn_probabilities(self) -> Resampler:
            return in_slabs(super().resampling_fn_probabilities)

    return SlabwiseConfiguration(manager.configuration)
