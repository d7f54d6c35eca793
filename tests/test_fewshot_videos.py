"""Whole-insert video plans and the forward/backward merge (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sslmedsam2.fewshot.propagation import merge_directions
from sslmedsam2.fewshot.videos import FrameRef, insertion_positions, plan_videos, whole_insert_video


def test_frame_order_and_prompts_of_a_middle_insert():
    nonempty = np.array([False, True, True, False])
    video = whole_insert_video(num_query=5, support_nonempty=nonempty, insert_at=2)
    assert video.frames == (
        FrameRef("query", 0), FrameRef("query", 1),
        FrameRef("support", 0), FrameRef("support", 1), FrameRef("support", 2), FrameRef("support", 3),
        FrameRef("query", 2), FrameRef("query", 3), FrameRef("query", 4),
    )
    assert video.prompted == (3, 4)
    assert (video.first_prompted, video.last_prompted) == (3, 4)
    assert video.query_frames == (0, 1, 6, 7, 8)
    assert [video.prompt_slice(i) for i in video.prompted] == [1, 2]
    assert video.frames[2] == ("support", 0)  # plain tuples compare equal


@pytest.mark.parametrize("insert_at", [0, 5])
def test_insert_at_either_end(insert_at):
    video = whole_insert_video(5, np.array([True, True]), insert_at)
    support = [i for i, ref in enumerate(video.frames) if ref.source == "support"]
    assert support == [insert_at, insert_at + 1]
    assert [video.frames[i] for i in video.query_frames] == [FrameRef("query", i) for i in range(5)]


def test_prompt_slice_rejects_query_frames():
    video = whole_insert_video(3, np.array([True]), 1)
    with pytest.raises(ValueError, match="query slice 0"):
        video.prompt_slice(0)


def test_empty_support_and_bad_position_are_refused():
    with pytest.raises(ValueError, match="empty"):
        whole_insert_video(3, np.array([False, False]), 1)
    with pytest.raises(ValueError, match="outside"):
        whole_insert_video(3, np.array([True]), 4)


def test_insertion_positions_are_seeded_distinct_and_in_range():
    first = insertion_positions(30, 5, np.random.default_rng(7))
    again = insertion_positions(30, 5, np.random.default_rng(7))
    assert first == again == sorted(first)
    assert len(set(first)) == 5 and all(0 <= p <= 30 for p in first)
    assert insertion_positions(2, 5, np.random.default_rng(0)) == [0, 1, 2]  # only 3 slots


def test_the_authors_range_never_appends():
    positions = insertion_positions(3, 5, np.random.default_rng(0), after_last=False)
    assert positions == [0, 1, 2]
    videos = plan_videos(3, np.array([True]), 3, np.random.default_rng(1), after_last=False)
    assert all(v.frames[-1].source == "query" for v in videos)


def test_plan_has_one_video_per_position():
    videos = plan_videos(10, np.array([True, False, True]), 4, np.random.default_rng(3))
    assert len({v.insert_at for v in videos}) == 4
    assert all(len(v.frames) == 13 for v in videos)


def test_merge_averages_only_where_both_directions_cover():
    forward = {2: torch.full((2, 2), 4.0), 3: torch.full((2, 2), 1.0)}
    backward = {0: torch.full((2, 2), -1.0), 2: torch.full((2, 2), 2.0)}
    merged = merge_directions(forward, backward)
    assert sorted(merged) == [0, 2, 3]
    assert torch.equal(merged[2], torch.full((2, 2), 3.0))
    assert torch.equal(merged[0], backward[0]) and torch.equal(merged[3], forward[3])
