"""Deformable registration of a support onto a query with ANTs' symmetric normalisation (SyN).

Across real patients the liver differs in shape far more than an affine map can absorb: on the
14 CHAOS patients one support's affine-warped mask reaches a mean Dice of about 0.6 and ANTs'
rigid + affine + SyN about 0.75 (``benchmarks/bench_fewshot_real.py``). ANTs (antspyx) starts
from the intensity centres of mass, never from the header origins, which real collections do not
keep consistent between patients.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class SynConfig:
    """ANTs' schedule. ``transform``: an antspyx ``type_of_transform``; the quick script's
    rigid + affine + SyN with mutual information is what the benchmark chose (see RESULTS.md)."""

    transform: str = "antsRegistrationSyNQuick[s]"


def warp_support_mask(query: sitk.Image, fixed: sitk.Image, moving: sitk.Image,
                      mask: sitk.Image, config: SynConfig = SynConfig()) -> np.ndarray:
    """The support ``mask`` carried onto ``query``'s grid as a soft map (0..1, z-y-x), after
    registering the working images ``moving`` (support) -> ``fixed`` (query). Raises
    RuntimeError when ANTs fails."""
    import ants  # heavy: imported only when the deformable engine runs

    workdir = tempfile.mkdtemp(prefix="sslmedsam2-syn-")
    try:
        result = ants.registration(
            ants.from_sitk(_normalised(fixed)), ants.from_sitk(_normalised(moving)),
            type_of_transform=config.transform, outprefix=os.path.join(workdir, "tx_"))
        warped = ants.apply_transforms(
            ants.from_sitk(sitk.Cast(query, sitk.sitkFloat32)),
            ants.from_sitk(sitk.Cast(mask > 0, sitk.sitkFloat32)),
            result["fwdtransforms"], interpolator="linear")
        return np.clip(sitk.GetArrayFromImage(ants.to_sitk(warped)), 0.0, 1.0).astype(np.float32)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _normalised(image: sitk.Image) -> sitk.Image:
    """Intensities to 0..1 between the 0.5 and 99.5 percentiles: MRI scales differ per scanner."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    low, high = np.percentile(array, (0.5, 99.5))
    scaled = sitk.GetImageFromArray(np.clip((array - low) / max(high - low, 1e-6), 0.0, 1.0))
    scaled.CopyInformation(image)
    return scaled
