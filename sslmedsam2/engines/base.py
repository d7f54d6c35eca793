"""The interface every segmentation engine implements.

An engine is built once from a weights folder and then called per volume, like nnU-Net's
predictor. The few-shot SAM2 and atlas engines plug in beside nnU-Net through this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class RuntimeOptions:
    """Choices about how to run a model, shared by all engines. None means 'decide by device'."""

    device: str = "auto"
    tta: bool | None = None
    folds: tuple[str, ...] | None = None
    configuration: str | None = None
    threads: int | None = None
    #: seconds per case a segmentation may take (None: no limit; see sslmedsam2.container.budget)
    time_budget: float | None = None


@dataclass
class Segmentation:
    """A binary mask on the input's (z, y, x) grid and a short description of how it was made.

    Few-shot engines also return a per-voxel uncertainty (binary entropy, 0..1), which pseudo
    labelling saves beside the mask, and the liver probability it came from, which lets two
    engines be averaged (``sslmedsam2.engines.average``).
    """

    mask: np.ndarray
    detail: str
    uncertainty: np.ndarray | None = None
    #: where and in which float format it ran (for the run summary)
    device: str = "cpu"
    precision: str = "fp32"
    #: liver probability (float32, 0..1) on the mask's grid, where the engine has one
    probability: np.ndarray | None = None


class Engine(Protocol):
    """Loads once, segments many volumes."""

    name: str

    def can_segment(self, sequence: str) -> bool:
        """True when this engine has what it needs (weights, supports) for ``sequence``."""

    def missing(self, sequence: str) -> str:
        """What would have to exist for ``sequence`` to be served, and where."""

    def load(self, sequence: str) -> None:
        """Load what ``sequence`` needs (weights, supports) if not loaded yet; raises if broken."""

    def over_budget(self, image: sitk.Image, sequence: str, vendor: str | None = None) -> str | None:
        """Why ``image`` cannot be segmented within the time budget even at this engine's cheapest
        (the case then goes to the next engine), or None. Engines that always run return None."""

    def segment(self, image: sitk.Image, sequence: str, vendor: str | None = None) -> Segmentation:
        """Segment a validated 3D volume; the mask has the image's array shape. ``vendor`` lets
        few-shot engines prefer supports from the same scanner."""


class EngineFactory(Protocol):
    def __call__(self, weights_dir: Path, options: RuntimeOptions) -> Engine: ...
