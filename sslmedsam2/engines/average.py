"""The trained model and the atlas, averaged voxel by voxel: a second opinion at prediction.

With one or a few labelled patients the nnU-Net trained on pseudo labels and the atlas that made
round 0's labels still fail in different places: the model strays where its few real labels never
reached, the registration misses boundaries it cannot see. On the real-patient benchmark with one
label the mean of their two liver probabilities, thresholded at one half, beat the model alone
on Dice in four folds of six and on HD95 in five (``benchmarks/RESULTS.md``, attempt 8). It
costs a registration per case on top of the model. Where the two organs are far apart (Dice under
``MODEL_ALONE_BELOW``) one engine failed outright, and on the benchmark the average then fell
below the model alone: the model's organ is served alone there (attempt 12), unless it is a small
fraction of the atlas's, a liver the model did not find (attempt 20); where the two barely overlap
they found different objects, and the atlas's is served (attempt 24). A model that never learned
its own training labels (``UNTAUGHT_BELOW``) gives way to the atlas where the two part, as round
0's labelled-only model does (attempt 27). An SSL run's weights
ask for the average (``loop.serve_average``, on by default; the manifest's ``engines``), and only
for the supports' own sequence: another sequence's atlas is affine and was never measured averaged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sslmedsam2.engines.atlas import AtlasEngine
from sslmedsam2.engines.base import Engine, RuntimeOptions, Segmentation
from sslmedsam2.engines.nnunet import NnUNetEngine
from sslmedsam2.engines.pair import EnginePair
from sslmedsam2.errors import EngineUnavailableError
from sslmedsam2.evaluation.metrics import dice
from sslmedsam2.manifest import exported_model_info
from sslmedsam2.postprocess import binary_entropy, component_most_like, largest_component

log = logging.getLogger(__name__)

#: below this Dice between the two organs the model is served alone: on real patients with one
#: label, the average then fell below the model where a single support registered badly
#: (benchmarks/RESULTS.md, attempt 12)
MODEL_ALONE_BELOW = 0.7
#: where the two part ways, an organ under this share of the other's size is a liver its engine
#: did not find, not one it found better: the dark liver of attempt 20, where the model's organ was
#: a fifth of the atlas's. The 14 CHAOS livers differ in size by less than 2x.
SMALLER_FAILED_BELOW = 1 / 3
#: organs this unlike are two different objects, not one liver drawn twice, and the atlas's is
#: served: registration from a labelled liver lands on the liver (its worst one-support label of
#: 14 CHAOS patients scored 0.58 Dice since few-shot attempt 8), while a model can find a
#: liver-sized object elsewhere, as on the dark liver at the default schedule (attempt 24)
DIFFERENT_OBJECTS_BELOW = 0.2
#: an exported model whose labels of its own pseudo-labelled training patients agree with the
#: labels it was trained on under this (mean Dice, the manifest's ``teacher_agreement``) did not
#: learn its lessons, and where it parts from the atlas the atlas's organ is served, round 0's
#: rule. Students agreed at 0.745 after 300 iterations, the default schedule, where the model-alone
#: rule served 0.016 under round 0; at 0.865-0.875 after 720 and 0.941 after 1440, where the model
#: alone did better (benchmarks/RESULTS.md, attempts 12, 14, 25-27)
UNTAUGHT_BELOW = 0.8


def untaught_agreement(weights_dir: Path, sequence: str) -> float | None:
    """The exported model's agreement with its teacher where it is under ``UNTAUGHT_BELOW`` (the
    atlas then goes first); None where it learned its labels or nothing was measured."""
    agreement = exported_model_info(weights_dir, sequence).get("teacher_agreement")
    return agreement if agreement is not None and agreement < UNTAUGHT_BELOW else None


class AverageEngine(EnginePair):
    """A model (``first``) and an atlas (``second``) segment every volume; the mask is where their
    mean probability reaches ``threshold`` (largest component), or ``first``'s organ alone where
    the two organs are less alike than ``first_alone_below`` (``second``'s where ``first``'s is far
    the smaller), and ``second``'s where they are less alike than ``second_alone_below`` (two
    different objects; the served engine's atlas). Each must return a probability.
    Round 0 may put the atlas first: a model trained on one labelled patient is the one that
    fails there (``pseudo_labels.fusion = "average-atlas"``)."""

    name = "average"

    def __init__(self, model: Engine, atlas: Engine, threshold: float = 0.5,
                 sequences: tuple[str, ...] | None = None,
                 first_alone_below: float | None = MODEL_ALONE_BELOW,
                 second_alone_below: float | None = None) -> None:
        super().__init__(model, atlas)
        self.threshold = threshold
        self.first_alone_below = first_alone_below
        self.second_alone_below = second_alone_below
        #: the sequences averaged (None: any both engines serve)
        self.sequences = sequences

    @classmethod
    def from_weights(cls, weights_dir: Path, options: RuntimeOptions) -> AverageEngine:
        """The weights folder's nnU-Net (with its probability) and its supports' atlas, for the
        supports' sequence; the atlas goes first where the model did not learn its training labels."""
        atlas = AtlasEngine.from_weights(weights_dir, options)
        model = NnUNetEngine(weights_dir, options, with_uncertainty=True)
        sequences = (atlas.support_sequence,)
        agreement = untaught_agreement(weights_dir, atlas.support_sequence)
        if agreement is not None:
            log.info("%s: the model labels its training patients %.3f alike with the labels it was "
                     "taught (under %.2f): where it parts from the atlas, the atlas's organ is served",
                     weights_dir, agreement, UNTAUGHT_BELOW)
        return cls.ordered(model, atlas, atlas_first=agreement is not None, sequences=sequences)

    @classmethod
    def ordered(cls, model: Engine, atlas: Engine, atlas_first: bool, **options: Any) -> AverageEngine:
        """A model and an atlas in one of the two orders served: the model first keeps its organ
        where the two part and gives way to the atlas where they found different objects; the atlas
        first keeps the atlas's organ where they part (a model that did not learn its labels)."""
        if atlas_first:
            return cls(atlas, model, **options)
        return cls(model, atlas, second_alone_below=DIFFERENT_OBJECTS_BELOW, **options)

    @classmethod
    def ordered_of(cls, make_model: Callable[[], Engine], make_atlas: Callable[[], Engine],
                   atlas_first: bool) -> AverageEngine:
        """``ordered`` from two recipes, so a picklable recipe of it can travel to a worker."""
        return cls.ordered(make_model(), make_atlas(), atlas_first)

    def can_segment(self, sequence: str) -> bool:
        averaged = self.sequences is None or sequence in self.sequences
        return averaged and super().can_segment(sequence)

    def missing(self, sequence: str) -> str:
        if self.sequences is not None and sequence not in self.sequences:
            return f"averaging covers {', '.join(self.sequences)} only (the supports' sequence)"
        return super().missing(sequence)

    def combine(self, a: Segmentation, b: Segmentation) -> Segmentation:
        return average(a, b, self.threshold, self.first_alone_below,
                       second_alone_below=self.second_alone_below)


def average(a: Segmentation, b: Segmentation, threshold: float = 0.5,
            first_alone_below: float | None = None,
            smaller_failed_below: float = SMALLER_FAILED_BELOW,
            second_alone_below: float | None = None) -> Segmentation:
    """The largest component where the mean of two engines' liver probabilities reaches
    ``threshold``; its binary entropy is the uncertainty. Each probability first takes the side of
    its engine's organ (``on_the_mask_side``). Where the two organs are less alike by Dice than
    ``first_alone_below``, one of them failed and one organ is served alone: ``a``'s (on the
    benchmark the model alone then did at least as well as the average, the model as ``a``),
    unless it is under ``smaller_failed_below`` of ``b``'s size. Under ``second_alone_below`` the
    two found different objects and ``b``'s organ is served, unless it is the far smaller."""
    for own in (a, b):
        if own.probability is None:
            raise EngineUnavailableError(f"averaging needs a liver probability; {own.detail} "
                                         "returned a mask only")
    organs, alike = organs_alike(a.mask, b.mask)
    if second_alone_below is not None and alike < second_alone_below:
        sided, detail = _one_organ_alone(b, a, organs[::-1], smaller_failed_below,
                                         f"{alike:.0%} alike by Dice, under {second_alone_below:.0%}: "
                                         "different objects")
    elif first_alone_below is not None and alike < first_alone_below:
        sided, detail = _one_organ_alone(a, b, organs, smaller_failed_below,
                                         f"{alike:.0%} alike by Dice, under {first_alone_below:.0%}")
    else:
        sided = (_sided(a.probability, organs[0]) + _sided(b.probability, organs[1])) / 2
        detail = f"average of {a.detail} and {b.detail} (organs {alike:.0%} alike by Dice)"
    return Segmentation(largest_component(sided >= threshold), detail, binary_entropy(sided),
                        device=a.device, precision=a.precision, probability=sided)


def _one_organ_alone(a: Segmentation, b: Segmentation, organs: tuple[np.ndarray, np.ndarray],
                     smaller_failed_below: float, why: str) -> tuple[np.ndarray, str]:
    """``a``'s organ on its own probability, or ``b``'s where ``a``'s is far the smaller; the
    detail names both engines, whichever is served."""
    if organs[0].sum() >= smaller_failed_below * organs[1].sum():
        return _sided(a.probability, organs[0]), f"{a.detail} alone, not {b.detail} ({why})"
    return (_sided(b.probability, organs[1]),
            f"{b.detail} alone, {a.detail}'s organ under {smaller_failed_below:.0%} of its size ({why})")


def organs_alike(a: np.ndarray, b: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    """Each mask's organ (its component the other overlaps most) and the two organs' Dice."""
    organs = component_most_like(a, b) > 0, component_most_like(b, a) > 0
    return organs, dice(*organs)


def on_the_mask_side(segmentation: Segmentation, other: np.ndarray) -> np.ndarray:
    """The probability with its side taken from the engine's organ: an island the model is sure
    of, or a strand the atlas's opening cut, counts as sure background, so the average never
    revives what either engine's clean-up removed. The distance from one half, the engine's
    confidence, is kept. The organ is the component of the engine's mask that the ``other``
    engine's mask overlaps most (the largest where none does): a model that finds the liver and
    a bigger false object elsewhere keeps the liver (benchmarks/RESULTS.md, attempt 11)."""
    return _sided(segmentation.probability, component_most_like(segmentation.mask, other) > 0)


def _sided(probability: np.ndarray, organ: np.ndarray) -> np.ndarray:
    """``probability``'s distance from one half, on the organ's side of it."""
    distance = np.abs(np.asarray(probability, np.float32) - 0.5)
    return np.where(organ, 0.5 + distance, 0.5 - distance).astype(np.float32)
