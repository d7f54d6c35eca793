"""The "random whole insert" plan: where support volumes go in the query's slice sequence.

For each (query, support) pair the method draws K insertion positions along the query's slices
and, at each, inserts the *whole* support volume as one contiguous block, making one video per
position. Only the plan lives here (pure data, no torch), so frame order and prompt placement can
be tested without a model.

Insertion positions: the authors draw them from 0..Q-1 (insert before query slice p), so the block
can open the video but never close it. We draw from 0..Q by default, so it may also follow the
last query slice. Query slices before the block are reached only by the backward pass, those
after it only by the forward pass. With 0..Q-1 the last query slice is always reached forward,
while the first can be reached either way; with 0..Q the two ends are treated alike (reversing a
query's slice order maps position p to Q - p), so the plan does not favour the end a scanner
happens to store first. ``after_last=False`` gives the authors' range.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

log = logging.getLogger(__name__)


class FrameRef(NamedTuple):
    """One frame of a video: ``("query", i)`` is query slice i, ``("support", j)`` support slice j.

    Frames are references, not pixels, so every video over the same query and support shares one
    encoding of each unique slice.
    """

    source: Literal["query", "support"]
    index: int


@dataclass(frozen=True)
class InsertVideo:
    """A query with a whole support volume inserted before query slice ``insert_at``.

    ``prompted`` are the video frame indices of support slices with a non-empty mask (each gets a
    mask prompt); ``query_frames[i]`` is the video frame index of query slice i.
    """

    frames: tuple[FrameRef, ...]
    insert_at: int
    prompted: tuple[int, ...]
    query_frames: tuple[int, ...]

    @property
    def first_prompted(self) -> int:
        """Forward propagation starts here."""
        return self.prompted[0]

    @property
    def last_prompted(self) -> int:
        """Backward propagation starts here."""
        return self.prompted[-1]

    def prompt_slice(self, frame_idx: int) -> int:
        """The support slice shown at video frame ``frame_idx`` (which must be a support frame)."""
        ref = self.frames[frame_idx]
        if ref.source != "support":
            raise ValueError(f"video frame {frame_idx} is query slice {ref.index}, not a support")
        return ref.index


def insertion_positions(
    num_query: int, count: int, rng: np.random.Generator, after_last: bool = True
) -> list[int]:
    """``count`` distinct positions in 0..num_query (insert before query slice p; p == num_query
    appends), drawn without replacement and returned sorted. Fewer when there are fewer slots.
    ``after_last=False`` draws from 0..num_query-1, the authors' range (see the module doc)."""
    slots = num_query + 1 if after_last else num_query
    if count > slots:
        log.warning(
            "only %d insertion positions exist for %d query slices; using all", slots, num_query
        )
        count = slots
    return sorted(int(p) for p in rng.choice(slots, size=count, replace=False))


def whole_insert_video(num_query: int, support_nonempty: np.ndarray, insert_at: int) -> InsertVideo:
    """The video query[:p] + support + query[p:] for p = ``insert_at``.

    ``support_nonempty[j]`` says whether support slice j has liver; those frames are prompted.
    Raises ValueError when no support slice is non-empty (nothing to propagate from).
    """
    if not 0 <= insert_at <= num_query:
        raise ValueError(f"insert_at={insert_at} outside 0..{num_query}")
    nonempty = np.asarray(support_nonempty, bool)
    if not nonempty.any():
        raise ValueError("the support mask is empty on every slice: nothing to prompt with")
    frames = (
        [FrameRef("query", i) for i in range(insert_at)]
        + [FrameRef("support", j) for j in range(len(nonempty))]
        + [FrameRef("query", i) for i in range(insert_at, num_query)]
    )
    prompted = tuple(insert_at + int(j) for j in np.flatnonzero(nonempty))
    query_frames = tuple(i if i < insert_at else i + len(nonempty) for i in range(num_query))
    return InsertVideo(tuple(frames), insert_at, prompted, query_frames)


def plan_videos(
    num_query: int,
    support_nonempty: np.ndarray,
    insertions: int,
    rng: np.random.Generator,
    after_last: bool = True,
) -> list[InsertVideo]:
    """All whole-insert videos of one (query, support) pair: one per drawn insertion position."""
    return [
        whole_insert_video(num_query, support_nonempty, p)
        for p in insertion_positions(num_query, insertions, rng, after_last)
    ]
