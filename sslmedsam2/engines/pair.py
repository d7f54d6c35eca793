"""Two engines that segment every volume, their results combined: the shared plumbing of the
agreement (round 0's fused pseudo labels) and the average (model and atlas at prediction)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import SimpleITK as sitk

from sslmedsam2.engines.base import Engine, Segmentation


class EnginePair(ABC):
    """Serves a sequence only when both ``first`` and ``second`` can; subclasses say how their
    two segmentations become one (``combine``)."""

    name = "pair"

    def __init__(self, first: Engine, second: Engine) -> None:
        self.first, self.second = first, second

    @classmethod
    def of(cls, make_first: Callable[[], Engine], make_second: Callable[[], Engine]) -> EnginePair:
        """Built from two recipes, so a picklable recipe of it can travel to a worker."""
        return cls(make_first(), make_second())

    def can_segment(self, sequence: str) -> bool:
        return self.first.can_segment(sequence) and self.second.can_segment(sequence)

    def missing(self, sequence: str) -> str:
        return "; ".join(e.missing(sequence) for e in (self.first, self.second)
                         if not e.can_segment(sequence))

    def load(self, sequence: str) -> None:
        self.first.load(sequence)
        self.second.load(sequence)

    def over_budget(self, image: sitk.Image, sequence: str, vendor: str | None = None) -> str | None:
        return (self.first.over_budget(image, sequence, vendor)
                or self.second.over_budget(image, sequence, vendor))

    def segment(self, image: sitk.Image, sequence: str, vendor: str | None = None) -> Segmentation:
        return self.combine(self.first.segment(image, sequence, vendor),
                            self.second.segment(image, sequence, vendor))

    @abstractmethod
    def combine(self, a: Segmentation, b: Segmentation) -> Segmentation:
        """One segmentation from ``first``'s (``a``) and ``second``'s (``b``)."""
