"""Atlas engine: registration-based few-shot segmentation from labelled support cases.

Needs no network weights, only supports (``<weights>/supports/<case>/GED4.nii.gz`` +
``mask_GED4.nii.gz``), so it is the last fallback of the container and a baseline for the SAM2
pseudo-labeller. Any query sequence is handled: registration uses mutual information.
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from sslmedsam2.engines.base import RuntimeOptions, Segmentation
from sslmedsam2.registration.label_propagation import AtlasConfig, propagate
from sslmedsam2.sequences import GED4
from sslmedsam2.supports import (WEIGHTS_SUPPORTS_DIR, Support, load_support, same_vendor_first,
                                 support_sequence, weights_supports)


class AtlasEngine:
    """Registers up to ``max_supports`` supports (same vendor first) to each query and votes."""

    name = "atlas"

    def __init__(self, supports: list[Support], config: AtlasConfig = AtlasConfig(),
                 max_supports: int = 5, origin: str = "", support_sequence: str = GED4) -> None:
        self.supports = supports
        self.config = config
        #: the supports' sequence: queries of another sequence are registered affinely (see atlas)
        self.support_sequence = support_sequence
        self.max_supports = max_supports
        self.origin = origin
        self._volumes: dict[str, tuple[sitk.Image, sitk.Image]] = {}

    @classmethod
    def from_weights(cls, weights_dir: Path, options: RuntimeOptions) -> "AtlasEngine":
        supports = weights_supports(weights_dir)
        return cls(supports, origin=str(Path(weights_dir) / WEIGHTS_SUPPORTS_DIR),
                   support_sequence=support_sequence(supports))

    def can_segment(self, sequence: str) -> bool:
        return bool(self.supports)

    def missing(self, sequence: str) -> str:
        return (f"support cases for the atlas engine at {self.origin or WEIGHTS_SUPPORTS_DIR}/<case>/"
                "<SEQ>.nii.gz with mask_<SEQ>.nii.gz")

    def load(self, sequence: str) -> None:
        for support in self.supports:
            if support.case not in self._volumes:
                self._volumes[support.case] = load_support(support)

    def over_budget(self, image: sitk.Image, sequence: str, vendor: str | None = None) -> str | None:
        """Never: registration is the last resort, cheap and bounded."""
        return None

    def segment(self, image: sitk.Image, sequence: str, vendor: str | None = None) -> Segmentation:
        self.load(sequence)
        chosen = same_vendor_first(self.supports, vendor)[: self.max_supports]
        fused = propagate(image, [self._volumes[s.case] for s in chosen], self.config,
                          same_sequence=sequence == self.support_sequence)
        return Segmentation(mask=fused.mask, uncertainty=fused.uncertainty,
                            probability=fused.probability,
                            detail=f"atlas supports={','.join(s.case for s in chosen)}")
