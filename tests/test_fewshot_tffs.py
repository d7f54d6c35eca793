"""TFFS-MedSAM2 mechanics on a randomly initialised tiny SAM2 at 64 px (never a quality claim):
the exact caches give the naive path's numbers with one encoder pass per unique slice and one
memory-encoder pass per prompted support slice and query size."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from sslmedsam2.fewshot.checkpoints import build_predictor, resolve_checkpoint
from sslmedsam2.fewshot.propagation import (
    OBJ_ID,
    EncodedFrames,
    EncoderCounter,
    VideoInputs,
    _track,
    new_inference_state,
    prompt_outputs,
    propagate_video,
    quiet_progress,
)
from sslmedsam2.fewshot.tffs import TFFSConfig, TFFSSegmenter, segment_query
from sslmedsam2.fewshot.videos import whole_insert_video
from sslmedsam2.postprocess import binary_entropy

SIZE = 64


@pytest.fixture(scope="module")
def predictor() -> Iterator[torch.nn.Module]:
    """One random tiny model for the module. Single-threaded while it is used: on a shared 2-core
    box, two OpenMP threads on tiny tensors ran 7-50x slower than one (spin-waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    resolved = resolve_checkpoint(None, name="tiny", allow_random=True)
    try:
        yield build_predictor(resolved, hydra_overrides=[f"++model.image_size={SIZE}"])
    finally:
        torch.set_num_threads(threads)


def synthetic(shape: tuple[int, int, int], seed: int) -> tuple[sitk.Image, sitk.Image]:
    """A bright box ('liver') in noise, zero padding on top rows; first and last slice empty."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    image = rng.uniform(0, 100, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    mask[1:-1, y // 4 : 3 * y // 4, x // 4 : x // 2] = 1
    image[mask > 0] += 200
    image[:, :2] = 0
    return sitk.GetImageFromArray(image), sitk.GetImageFromArray(mask)


@pytest.fixture(scope="module")
def case() -> tuple[sitk.Image, list[tuple[sitk.Image, sitk.Image]]]:
    query, _ = synthetic((5, 24, 28), 1)
    return query, [synthetic((4, 30, 30), 2), synthetic((3, 20, 26), 3)]


PROMPTED = 2 + 1  # non-empty slices of the two supports (first and last slices are empty)


def test_cached_equals_naive_with_unique_frames_encoded_once(predictor, case):
    query, supports = case
    config = TFFSConfig(insertions=2, seed=3)
    cached = segment_query(predictor, query, supports, config)
    naive = segment_query(predictor, query, supports, TFFSConfig(insertions=2, seed=3, cache_encoder=False))
    assert cached.maps == naive.maps == 4
    np.testing.assert_allclose(cached.probability, naive.probability, atol=1e-5)
    assert np.array_equal(cached.mask, naive.mask)
    unique = 5 + 4 + 3
    assert cached.encoder_frames == unique
    assert cached.encoder_calls == 3  # one batch each: query, support 1, support 2
    assert naive.encoder_frames > unique and naive.encoder_calls == naive.encoder_frames
    # naive: every prompted slice in each of 2 insertions x 2 directions; cached: once each.
    # Tracked frames pay the memory encoder on both paths.
    assert naive.memory_encoder_calls - cached.memory_encoder_calls == 2 * 2 * PROMPTED - PROMPTED


def test_prompt_outputs_do_not_depend_on_the_frame_position(predictor):
    """What add_new_mask + preflight leave for a support slice inside a video equals, bit for bit,
    what prompt_outputs makes on the support alone: the premise of reusing them."""
    query = EncodedFrames.encode(predictor, torch.randn(3, 3, SIZE, SIZE))
    support = EncodedFrames.encode(predictor, torch.randn(3, 3, SIZE, SIZE))
    masks = np.zeros((3, 12, 14), bool)
    masks[1:, 3:8, 4:9] = True
    masks[2, 8:10] = True
    alone = prompt_outputs(predictor, support, masks, (12, 14))
    video = whole_insert_video(3, masks.reshape(3, -1).any(axis=1), insert_at=2)
    inputs = VideoInputs(query=query.images, support=support.images, support_masks=masks,
                         video_size=(12, 14), query_encoded=query, support_encoded=support)
    state = new_inference_state(predictor, query.images, (12, 14), inputs.cached_features(video))
    state["num_frames"] = len(video.frames)
    with torch.inference_mode():
        for frame_idx in video.prompted:
            mask = torch.from_numpy(masks[video.prompt_slice(frame_idx)])
            predictor.add_new_mask(state, frame_idx=frame_idx, obj_id=OBJ_ID, mask=mask)
        predictor.propagate_in_video_preflight(state)
    in_video = state["output_dict_per_obj"][0]["cond_frame_outputs"]
    assert sorted(alone) == [1, 2] and sorted(in_video) == [3, 4]
    for frame_idx, out in in_video.items():
        reference = alone[video.prompt_slice(frame_idx)]
        assert set(out) == set(reference)
        for key, value in out.items():
            tensors = value if isinstance(value, list) else [value]
            expected = reference[key] if isinstance(value, list) else [reference[key]]
            assert all(torch.equal(a, b) for a, b in zip(tensors, expected)), key


def test_outputs_on_the_query_grid(predictor, case):
    query, supports = case
    result = segment_query(predictor, query, supports[:1], TFFSConfig(insertions=1))
    shape = sitk.GetArrayViewFromImage(query).shape
    assert result.mask.shape == result.probability.shape == result.uncertainty.shape == shape
    assert result.mask.dtype == np.uint8 and set(np.unique(result.mask)) <= {0, 1}
    assert result.probability.dtype == np.float32 and result.uncertainty.dtype == np.float32
    assert 0 <= result.probability.min() and result.probability.max() <= 1
    assert np.array_equal(result.mask > 0, (result.mask > 0) & (result.probability > 0.5))


def test_permuted_query_comes_back_in_its_own_array_order(predictor, case):
    _, supports = case
    array = np.random.default_rng(4).uniform(1, 100, (20, 5, 24)).astype(np.float32)
    query = sitk.GetImageFromArray(array)
    query.SetDirection((1, 0, 0, 0, 0, 1, 0, -1, 0))  # array axis 1 is superior-inferior
    result = segment_query(predictor, query, supports[:1], TFFSConfig(insertions=1))
    assert result.probability.shape == (20, 5, 24)
    assert result.encoder_frames == 5 + 4  # 5 axial query slices, not 20


def test_empty_supports_are_skipped_or_refused(predictor, case):
    query, supports = case
    image, mask = supports[0]
    empty = sitk.Image(mask)
    empty *= 0
    result = segment_query(predictor, query, [(image, empty), supports[1]], TFFSConfig(insertions=1))
    assert result.maps == 1
    with pytest.raises(ValueError, match="non-empty"):
        segment_query(predictor, query, [(image, empty)], TFFSConfig(insertions=1))


def test_cond_frame_limit_is_restored(predictor, case):
    query, supports = case
    before = predictor.max_cond_frames_in_attn
    support = synthetic((6, 20, 20), 5)  # 4 prompted slices: a limit of 2 bites
    limited = segment_query(predictor, query, [support], TFFSConfig(insertions=1, max_cond_frames_in_attn=2))
    assert predictor.max_cond_frames_in_attn == before
    full = segment_query(predictor, query, [support], TFFSConfig(insertions=1))
    assert limited.probability.shape == full.probability.shape
    with pytest.raises(ValueError, match=">= 2"):
        TFFSConfig(max_cond_frames_in_attn=1)


def test_each_query_slice_comes_from_the_direction_that_reaches_it(predictor):
    """The support block is contiguous, so query slices before it are reached only going back
    and those after it only going forward: each gets exactly that direction's logits (the mean
    of both, merge_directions' other case, is tested in test_fewshot_videos)."""
    query = torch.randn(3, 3, SIZE, SIZE)
    support = torch.randn(2, 3, SIZE, SIZE)
    masks = np.zeros((2, 12, 12), bool)
    masks[:, 3:8, 3:8] = True
    video = whole_insert_video(3, np.array([True, True]), insert_at=1)
    inputs = VideoInputs(query=query, support=support, support_masks=masks, video_size=(12, 12))
    counter = EncoderCounter()
    with counter.watching(predictor):
        logits = propagate_video(predictor, video, inputs)
    assert logits.shape == (3, 12, 12) and logits.dtype == torch.float32
    assert counter.frames > len(video.frames)  # the naive path re-encodes
    keep = set(video.query_frames)
    forward = _track(predictor, video, inputs, reverse=False, keep=keep)
    backward = _track(predictor, video, inputs, reverse=True, keep=keep)
    covered = [[d[f] for d in (forward, backward) if f in d] for f in video.query_frames]
    assert [len(c) for c in covered] == [1, 1, 1]
    assert 0 in backward and {3, 4} <= set(forward)  # video: q0, s0, s1, q1, q2
    for row, (only,) in enumerate(covered):
        torch.testing.assert_close(logits[row], only)


def test_state_has_the_fields_init_state_creates(predictor, tmp_path: Path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "00000.jpg")
    reference = predictor.init_state(str(tmp_path))
    ours = new_inference_state(predictor, torch.zeros(1, 3, SIZE, SIZE), (8, 8))
    assert set(ours) == set(reference)


def test_encoded_frames_share_positional_encodings(predictor):
    encoded = EncodedFrames.encode(predictor, torch.randn(3, 3, SIZE, SIZE), batch_size=2)
    assert len(encoded) == 3
    assert encoded.features[0]["vision_pos_enc"][0] is encoded.features[2]["vision_pos_enc"][0]
    assert encoded.features[2]["backbone_fpn"][0].shape[0] == 1


def test_binary_entropy_is_one_bit_at_a_half():
    np.testing.assert_allclose(binary_entropy(np.array([0.0, 0.5, 1.0])), [0, 1.0, 0], atol=1e-6)


def test_segmenter_reuses_support_caches_across_queries(predictor, case):
    query, supports = case
    config = TFFSConfig(insertions=2, seed=3)
    counter = EncoderCounter()
    with counter.watching(predictor):
        segmenter = TFFSSegmenter(predictor, supports, config)
    assert counter.frames == 0  # supports are encoded at first use
    first = segmenter.segment(query)
    second = segmenter.segment(query)
    assert first.encoder_frames == 5 + 4 + 3 and second.encoder_frames == 5  # only the query's
    assert second.memory_encoder_calls == first.memory_encoder_calls - PROMPTED
    np.testing.assert_array_equal(first.probability, second.probability)  # fresh RNG per query
    naive = segment_query(predictor, query, supports, replace(config, cache_encoder=False))
    np.testing.assert_allclose(second.probability, naive.probability, atol=1e-5)
    wider, _ = synthetic((5, 24, 32), 1)  # another in-plane size: prompts again, encodings kept
    other = segmenter.segment(wider)
    assert other.encoder_frames == 5
    assert other.memory_encoder_calls == first.memory_encoder_calls  # same plan, prompts redone


@pytest.mark.parametrize("limit_mb", [0.0, 1.0])
def test_a_small_cache_bound_recomputes_and_stays_exact(predictor, case, limit_mb):
    """0 keeps nothing; 1 MB holds one support's entries at 64 px (0.7-0.8 MB of encodings), so
    cycling through two supports evicts each before its next use. Either way the numbers are the
    naive path's."""
    query, supports = case
    config = TFFSConfig(insertions=2, seed=3, cache_limit_mb=limit_mb)
    segmenter = TFFSSegmenter(predictor, supports, config)
    naive = segment_query(predictor, query, supports, replace(config, cache_encoder=False))
    for _ in range(2):
        result = segmenter.segment(query)
        np.testing.assert_allclose(result.probability, naive.probability, atol=1e-5)
        assert result.encoder_frames == 5 + 4 + 3  # supports not kept: encoded again, per query
        saved = naive.memory_encoder_calls - result.memory_encoder_calls
        assert saved == 2 * 2 * PROMPTED - PROMPTED  # prompts made once per query
        assert segmenter.cache.used_bytes <= limit_mb * 2**20
    assert (len(segmenter.cache) == 0) == (limit_mb == 0)


def test_propagation_draws_no_progress_bar(predictor, capsys):
    query = torch.randn(2, 3, SIZE, SIZE)
    support = torch.randn(1, 3, SIZE, SIZE)
    masks = np.ones((1, 12, 12), bool)
    video = whole_insert_video(2, np.array([True]), insert_at=1)
    inputs = VideoInputs(query=query, support=support, support_masks=masks, video_size=(12, 12))
    propagate_video(predictor, video, inputs)
    assert "propagate in video" not in capsys.readouterr().err
    state = new_inference_state(predictor, query, (12, 12))  # sam2 left alone: it draws bars
    with torch.inference_mode():
        predictor.add_new_mask(state, frame_idx=0, obj_id=OBJ_ID, mask=torch.from_numpy(masks[0]))
        with quiet_progress():
            list(predictor.propagate_in_video(state))
        assert "propagate in video" not in capsys.readouterr().err
        list(predictor.propagate_in_video(state))
    assert "propagate in video" in capsys.readouterr().err


def test_support_stride_and_max_supports_shrink_the_work(predictor, case):
    query, supports = case
    segmenter = TFFSSegmenter(predictor, supports, TFFSConfig(support_stride=2, max_supports=1))
    assert len(segmenter.supports) == 1
    assert len(segmenter.supports[0].frames) == 2  # slices 0 and 2 of 4
    assert segmenter.supports[0].nonempty.tolist() == [False, True]
    assert segmenter.segment(query).encoder_frames == 5 + 2


def test_support_mask_is_judged_at_the_query_size(predictor, case):
    """A one-voxel support mask that nearest resizing drops prompts nothing, as in the authors'
    code (they test the resized mask)."""
    query, supports = case
    image, _ = supports[0]  # 4 x 30 x 30; the query is 5 x 24 x 28
    tiny = np.zeros((4, 30, 30), np.uint8)
    tiny[1, 4, 14] = 1  # row 4 of 30 and column 14 of 30 are skipped by nearest to 24 x 28
    segmenter = TFFSSegmenter(predictor, [(image, sitk.GetImageFromArray(tiny))], TFFSConfig())
    with pytest.raises(ValueError, match="vanishes"):
        segmenter.segment(query)


def test_support_mask_must_match_its_image(predictor, case):
    _, supports = case
    image, _ = supports[0]
    other = sitk.GetImageFromArray(np.ones((4, 30, 29), np.uint8))
    with pytest.raises(ValueError, match="differs"):
        TFFSSegmenter(predictor, [(image, other)], TFFSConfig())
