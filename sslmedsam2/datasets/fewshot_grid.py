"""The grid the few-shot literature's abdominal MRI figures are measured on.

SSL-ALPNet (Ouyang et al., ECCV 2020) preprocessed CHAOS MR T2-SPIR once, and every later 1-shot
paper (GMRD, FoB+SAM, ...) reports on those copies, as this project's CHAOS benchmarks do: the top
0.5% of grey levels clipped, 1.25 x 1.25 x 7.7 mm voxels, 256 x 256 in plane about the volume's
centre. Converting a download onto this grid lets a user's figures stand beside those. Unlike the
published copies, the header keeps the true position of every voxel (their origin was not moved
with the crop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class FewShotGrid:
    """Clip, then resample image (linear) and mask (nearest) onto one grid centred on the image."""

    spacing: tuple[float, float, float] = (1.25, 1.25, 7.70)
    in_plane: tuple[int, int] = (256, 256)
    clip_top_percent: float = 0.5

    def apply(self, image: sitk.Image, mask: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
        """The image and its mask on the grid; the image keeps its pixel type (rounded)."""
        reference = self.reference(image)
        identity = sitk.Transform()
        resampled = sitk.Resample(self._clipped(image), reference, identity, sitk.sitkLinear, 0.0,
                                  sitk.sitkFloat32)
        return (sitk.Cast(sitk.Round(resampled), image.GetPixelID()),
                sitk.Resample(mask, reference, identity, sitk.sitkNearestNeighbor, 0, mask.GetPixelID()))

    def reference(self, image: sitk.Image) -> sitk.Image:
        """An empty volume of the grid: the image's direction and centre, the slab it spans."""
        old_size, old_spacing = np.array(image.GetSize()), np.array(image.GetSpacing())
        spacing = np.array(self.spacing)
        depth = max(1, round(float(old_size[2] * old_spacing[2] / spacing[2])))
        size = np.array([*self.in_plane, depth])
        centre = np.array(image.TransformContinuousIndexToPhysicalPoint(((old_size - 1) / 2).tolist()))
        direction = np.array(image.GetDirection()).reshape(3, 3)
        reference = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
        reference.SetSpacing(spacing.tolist())
        reference.SetDirection(image.GetDirection())
        reference.SetOrigin((centre - direction @ ((size - 1) / 2 * spacing)).tolist())
        return reference

    def _clipped(self, image: sitk.Image) -> sitk.Image:
        values = sitk.GetArrayFromImage(image)
        ceiling = np.percentile(values, 100.0 - self.clip_top_percent)
        clipped = sitk.GetImageFromArray(np.minimum(values, ceiling).astype(values.dtype))
        clipped.CopyInformation(image)
        return clipped
