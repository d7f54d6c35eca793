"""The trained model and the atlas, averaged voxel by voxel: a second opinion at prediction.

With one or a few labelled patients the nnU-Net trained on pseudo labels and the atlas that made
round 0's labels still fail in different places: the model strays where its few real labels never
reached, the registration misses boundaries it cannot see. On the real-patient benchmark with one
label the mean of their two liver probabilities, thresholded at one half, beat the model alone
on Dice in four folds of six and on HD95 in five (``benchmarks/RESULTS.md``, attempt 8). It
costs a registration per case on top of the model. An SSL run's weights ask for it
(``loop.serve_average``, on by default; the manifest's ``engines``), and only for the supports'
own sequence: another sequence's atlas is affine and was never measured averaged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sslmedsam2.engines.atlas import AtlasEngine
from sslmedsam2.engines.base import Engine, RuntimeOptions, Segmentation
from sslmedsam2.engines.nnunet import NnUNetEngine
from sslmedsam2.engines.pair import EnginePair
from sslmedsam2.errors import EngineUnavailableError
from sslmedsam2.evaluation.metrics import dice
from sslmedsam2.postprocess import binary_entropy, component_most_like, largest_component


class AverageEngine(EnginePair):
    """A model (``first``) and an atlas (``second``) segment every volume; the mask is where their
    mean probability reaches ``threshold`` (largest component). Each must return a probability."""

    name = "average"

    def __init__(self, model: Engine, atlas: Engine, threshold: float = 0.5,
                 sequences: tuple[str, ...] | None = None) -> None:
        super().__init__(model, atlas)
        self.threshold = threshold
        #: the sequences averaged (None: any both engines serve)
        self.sequences = sequences

    @classmethod
    def from_weights(cls, weights_dir: Path, options: RuntimeOptions) -> AverageEngine:
        """The weights folder's nnU-Net (with its probability) and its supports' atlas, for the
        supports' sequence."""
        atlas = AtlasEngine.from_weights(weights_dir, options)
        return cls(NnUNetEngine(weights_dir, options, with_uncertainty=True), atlas,
                   sequences=(atlas.support_sequence,))

    def can_segment(self, sequence: str) -> bool:
        averaged = self.sequences is None or sequence in self.sequences
        return averaged and super().can_segment(sequence)

    def missing(self, sequence: str) -> str:
        if self.sequences is not None and sequence not in self.sequences:
            return f"averaging covers {', '.join(self.sequences)} only (the supports' sequence)"
        return super().missing(sequence)

    def combine(self, a: Segmentation, b: Segmentation) -> Segmentation:
        return average(a, b, self.threshold)


def average(a: Segmentation, b: Segmentation, threshold: float = 0.5) -> Segmentation:
    """The largest component where the mean of two engines' liver probabilities reaches
    ``threshold``; its binary entropy is the uncertainty. Each probability first takes the side of
    its engine's organ (``on_the_mask_side``)."""
    for own in (a, b):
        if own.probability is None:
            raise EngineUnavailableError(f"averaging needs a liver probability; {own.detail} "
                                         "returned a mask only")
    mean = (on_the_mask_side(a, b.mask) + on_the_mask_side(b, a.mask)) / 2
    mask = largest_component(mean >= threshold)
    alike = dice(a.mask > 0, b.mask > 0)
    detail = f"average of {a.detail} and {b.detail} (masks {alike:.0%} alike by Dice)"
    return Segmentation(mask, detail, binary_entropy(mean), device=a.device,
                        precision=a.precision, probability=mean)


def on_the_mask_side(segmentation: Segmentation, other: np.ndarray) -> np.ndarray:
    """The probability with its side taken from the engine's organ: an island the model is sure
    of, or a strand the atlas's opening cut, counts as sure background, so the average never
    revives what either engine's clean-up removed. The distance from one half, the engine's
    confidence, is kept. The organ is the component of the engine's mask that the ``other``
    engine's mask overlaps most (the largest where none does): a model that finds the liver and
    a bigger false object elsewhere keeps the liver (benchmarks/RESULTS.md, attempt 11)."""
    organ = component_most_like(segmentation.mask, other) > 0
    distance = np.abs(np.asarray(segmentation.probability, np.float32) - 0.5)
    return np.where(organ, 0.5 + distance, 0.5 - distance).astype(np.float32)
