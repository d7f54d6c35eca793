"""One voxel-axis orientation for every model; masks go back to each input's own array layout.

nnU-Net uses the spacing of a volume, not its direction, so the same scan stored with flipped or
permuted axes looks like a different patient to it (flipped or worse masks); SAM2 slices along the
first array axis. Every volume is therefore reoriented before an engine sees it, to the
orientation the model was trained in (recorded in the weights manifest; training writes its
nnU-Net datasets in ``CANONICAL``). Reorienting permutes and flips the voxel array: no
resampling, so mapping a mask back is exact, oblique directions included (their residual rotation
stays in the direction matrix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

if TYPE_CHECKING:  # engines import this module (supports): no import cycle at run time
    from sslmedsam2.engines.base import Engine, Segmentation

#: ITK's identity direction: array x, y, z run to the patient's left, posterior, superior.
CANONICAL = "LPS"


def orientation_code(image: sitk.Image) -> str:
    """The three-letter code of the axis-aligned orientation closest to ``image``'s direction."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


@dataclass(frozen=True)
class Reoriented:
    """A volume in the model's orientation, and how to take its masks back."""

    image: sitk.Image
    source_code: str
    source_shape: tuple[int, ...]  # (z, y, x) of the volume as it came

    def restore(self, array: np.ndarray) -> np.ndarray:
        """A (z, y, x) array on ``image``'s grid, on the source volume's grid."""
        if self.source_code == orientation_code(self.image):
            return array
        moved = sitk.GetImageFromArray(array)
        moved.CopyInformation(self.image)
        back = sitk.GetArrayFromImage(sitk.DICOMOrient(moved, self.source_code))
        if back.shape != self.source_shape:  # a bug, never input
            raise RuntimeError(f"reorienting {self.source_code} back gave shape {back.shape}, not "
                               f"the input's {self.source_shape}")
        return back


def reorient(image: sitk.Image, code: str = CANONICAL) -> Reoriented:
    """``image`` with its voxel axes permuted/flipped to ``code`` (a no-op when already so)."""
    source_code = orientation_code(image)
    moved = image if source_code == code else sitk.DICOMOrient(image, code)
    return Reoriented(image=moved, source_code=source_code, source_shape=tuple(image.GetSize()[::-1]))


def segment_in_orientation(engine: "Engine", image: sitk.Image, sequence: str, vendor: str | None,
                           code: str = CANONICAL) -> "Segmentation":
    """``engine.segment`` on ``image`` reoriented to ``code``; the mask and its maps (uncertainty,
    probability) come back on ``image``'s own grid."""
    return segment_reoriented(engine, reorient(image, code), sequence, vendor)


def segment_reoriented(engine: "Engine", moved: Reoriented, sequence: str,
                       vendor: str | None) -> "Segmentation":
    """``engine.segment`` on an already reoriented volume, the result on the source's grid."""
    from sslmedsam2.engines.base import Segmentation
    code = orientation_code(moved.image)
    result = engine.segment(moved.image, sequence, vendor=vendor)
    uncertainty, probability = (None if own is None else moved.restore(own)
                                for own in (result.uncertainty, result.probability))
    detail = result.detail if moved.source_code == code else \
        f"{result.detail} (reoriented {moved.source_code}->{code})"
    return Segmentation(mask=moved.restore(result.mask), detail=detail, uncertainty=uncertainty,
                        device=result.device, precision=result.precision, probability=probability)
