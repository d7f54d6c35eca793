"""TFFS-MedSAM2 mechanics on a randomly initialised tiny SAM2 at 64 px (never a quality claim):
the exact encoder cache gives the naive path's numbers with one encoder pass per unique slice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from sslmedsam2.fewshot.checkpoints import build_predictor, resolve_checkpoint
from sslmedsam2.fewshot.propagation import (
    EncodedFrames,
    EncoderCounter,
    new_inference_state,
    propagate_video,
    VideoInputs,
)
from sslmedsam2.fewshot.tffs import TFFSConfig, TFFSSegmenter, segment_query
from sslmedsam2.postprocess import binary_entropy
from sslmedsam2.fewshot.videos import whole_insert_video

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


def test_forward_and_backward_both_cover_a_middle_query_slice(predictor):
    """Frames between the prompted ones get the mean of both directions; outer ones only one."""
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


def test_segmenter_encodes_supports_once_for_many_queries(predictor, case):
    query, supports = case
    config = TFFSConfig(insertions=2, seed=3)
    counter = EncoderCounter()
    with counter.watching(predictor):
        segmenter = TFFSSegmenter(predictor, supports, config)
    assert counter.frames == 4 + 3
    first = segmenter.segment(query)
    second = segmenter.segment(query)
    assert first.encoder_frames == second.encoder_frames == 5  # only the query's slices
    np.testing.assert_array_equal(first.probability, second.probability)  # fresh RNG per query
    alone = segment_query(predictor, query, supports, config)
    np.testing.assert_allclose(first.probability, alone.probability, atol=1e-6)


def test_support_stride_and_max_supports_shrink_the_work(predictor, case):
    _, supports = case
    counter = EncoderCounter()
    with counter.watching(predictor):
        segmenter = TFFSSegmenter(predictor, supports, TFFSConfig(support_stride=2, max_supports=1))
    assert len(segmenter.supports) == 1
    assert len(segmenter.supports[0].frames) == 2 and counter.frames == 2  # slices 0 and 2 of 4
    assert segmenter.supports[0].nonempty.tolist() == [False, True]


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
