"""Slab-wise resampling gives nnU-Net's own voxels (the memory bound of issue 6 must not move a
single voxel of the mask)."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape
from nnunetv2.preprocessing.resampling.resample_torch import resample_torch_fornnunet

from sslmedsam2.engines.slab_resampling import in_slabs, separate_axis, source_slices

# (input shape, its spacing, target spacing, target shape): export up along z, preprocessing down
# along z, an anisotropic last axis, and an isotropic plan (whole-volume path)
CASES = [((1, 37, 40, 44), [3.5, .6, .6], [1.0, .7, .7], [130, 34, 38]),
         ((2, 130, 34, 38), [1.0, .7, .7], [3.5, .6, .6], [37, 40, 44]),
         ((1, 40, 44, 9), [.6, .6, 3.5], [.7, .7, 1.2], [34, 38, 26]),
         ((1, 20, 22, 24), [1.0, 1.0, 1.0], [1.5, 1.5, 1.5], [13, 15, 16])]
# nnU-Net's plans: image (cubic), nonzero mask, logits at export (linear)
KWARGS = [dict(is_seg=False, order=3, order_z=0, force_separate_z=None),
          dict(is_seg=True, order=1, order_z=0, force_separate_z=None),
          dict(is_seg=False, order=1, order_z=0, force_separate_z=None)]


def _data(shape, is_seg: bool, seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).random(shape).astype(np.float32)
    if is_seg:
        return (values > 0.6).astype(np.int8) - (values < 0.1).astype(np.int8)
    return values


@pytest.mark.parametrize("kwargs", KWARGS, ids=["image", "mask", "logits"])
@pytest.mark.parametrize("case", CASES, ids=["up-z", "down-z", "aniso-x", "isotropic"])
def test_slabs_equal_nnunets_default_resampling(case, kwargs):
    shape, current, target, new_shape = case
    data = _data(shape, kwargs["is_seg"])
    function = partial(resample_data_or_seg_to_shape, **kwargs)
    # a tiny slab budget: several slabs even on these small volumes
    slabbed = in_slabs(function, slab_bytes=20_000)(data, new_shape, current, target)
    whole = function(data, new_shape, current, target)
    assert slabbed.dtype == whole.dtype and slabbed.shape == whole.shape
    np.testing.assert_array_equal(slabbed, whole)


@pytest.mark.parametrize("case", CASES[:3], ids=["up-z", "down-z", "aniso-x"])
def test_slabs_match_nnunets_torch_resampling(case):
    shape, current, target, new_shape = case
    data = _data(shape, False)
    function = partial(resample_torch_fornnunet, is_seg=False)
    slabbed = in_slabs(function, slab_bytes=20_000)(data, new_shape, current, target)
    # torch's kernels round differently with the batch size: equal to float precision
    np.testing.assert_allclose(slabbed, function(data, new_shape, current, target), atol=1e-6)


def test_source_slices_are_nnunets_nearest_slices():
    function = partial(resample_data_or_seg_to_shape, is_seg=False, order=1, order_z=0,
                       force_separate_z=None)
    assert separate_axis(function, [3.5, .6, .6], [1.0, .7, .7]) == 0
    picked = source_slices(function, 4, [14, 1, 1], 0, [3.5, .6, .6], [1.0, .7, .7])
    # 14 output slices from 4: each input slice 3 or 4 times, in order
    assert len(picked) == 14 and np.all(np.diff(picked) >= 0)
    assert sorted(set(picked.tolist())) == [0, 1, 2, 3]
    assert all(3 <= np.count_nonzero(picked == k) <= 4 for k in range(4))
    # a plan that blends slices along the anisotropic axis is left to nnU-Net's whole-volume call
    blending = partial(resample_data_or_seg_to_shape, is_seg=False, order=1, order_z=1,
                       force_separate_z=None)
    assert source_slices(blending, 4, [14, 1, 1], 0, [3.5, .6, .6], [1.0, .7, .7]) is None
    assert separate_axis(function, [1.0, 1.0, 1.0], [1.5, 1.5, 1.5]) is None


def test_engine_predicts_with_slabwise_resampling(trained_weights):
    from sslmedsam2.engines.base import RuntimeOptions
    from sslmedsam2.engines.nnunet import NnUNetEngine

    engine = NnUNetEngine(trained_weights, RuntimeOptions(device="cpu"))
    engine.load("GED4")
    predictor, _ = engine._loaded["GED4"]
    manager = predictor.configuration_manager
    assert type(manager).__name__ == "SlabwiseConfiguration"
    for function in (manager.resampling_fn_data, manager.resampling_fn_seg,
                     manager.resampling_fn_probabilities):
        assert function.func.__name__ == "resample_in_slabs"
