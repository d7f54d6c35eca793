"""Deformable registration of a support onto a query with ANTs' symmetric normalisation (SyN).

Across real patients the liver differs in shape far more than an affine map can absorb: on the
14 CHAOS patients, leave-one-out with one support, SimpleITK's affine reaches a mean Dice of
0.66 and this SyN 0.77 (``benchmarks/bench_fewshot_real.py``, RESULTS.md). ANTs (antspyx) starts
from the intensity centres of mass, never from the header origins, which real collections do not
keep consistent between patients. Its threads sum in a different order each run, so results
differ between runs, on hard pairs by a lot (one CHAOS pair: 0.68 and 0.13 Dice an hour apart);
:func:`pin_registration_threads` makes them repeat bit for bit. Its sampling is seeded
(``SynConfig.seed``): ANTs otherwise seeds it from the clock, so no two runs matched, and a
clean-clone CI once met a run scoring a held-out Dice of 0.48 on the synthetic example where
seeds 1-5 all give 0.95.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from sslmedsam2.registration.head_foot_search import HeadFootSearch, best_shift

if TYPE_CHECKING:
    import ants


@dataclass(frozen=True)
class SynConfig:
    """ANTs' schedule: ``transform`` is the antspyx ``type_of_transform`` of the ``affine`` start
    (the default runs rigid, affine, then SyN, all with mutual information). The SyN field is
    smoothed harder than ANTs' quick script (``flow_sigma`` 6 and ``total_sigma`` 1 voxels,
    against 3 and 0): unconstrained, SyN pulled the liver onto neighbouring organs on some
    patients (benchmarks/RESULTS.md).

    ``start``: the linear map SyN starts from. ``similarity`` (default) allows one scale for all
    three axes, so a support's liver cannot be stretched along the slices to fill a query whose
    scan covers less of the abdomen: from ANTs' own rigid + affine (``affine``), supports' livers
    reached 4-10 slices below the query's, onto the bowel (benchmarks/RESULTS.md, attempt 5).
    ``search``: after the similarity map, the support's liver is slid up or down to where the
    query looks most like one organ inside it (:mod:`.head_foot_search`; similarity start only)."""

    transform: str = "SyN"
    start: str = "similarity"
    flow_sigma: float = 6.0
    total_sigma: float = 1.0
    iterations: tuple[int, ...] = (100, 70, 50, 0)
    #: ANTs' sampling seed (non-zero); None: seeded from the clock, so runs differ
    seed: int | None = 1
    search: HeadFootSearch = HeadFootSearch()

    @classmethod
    def quick(cls) -> "SynConfig":
        """ANTs' antsRegistrationSyNQuick.sh schedule, as antspyx recreates it."""
        return cls(transform="antsRegistrationSyNQuick[s]", flow_sigma=3.0, total_sigma=0.0, start="affine")


def warp_support(query: sitk.Image, fixed: sitk.Image, moving: sitk.Image, image: sitk.Image,
                 mask: sitk.Image, config: SynConfig = SynConfig(),
                 with_image: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """The support's ``mask`` (a soft map, 0..1) and, ``with_image``, its ``image`` (intensities
    normalised) carried onto ``query``'s grid as z-y-x arrays, after registering the working
    images ``moving`` (support) -> ``fixed`` (query). Raises RuntimeError when ANTs fails."""
    import ants  # heavy: imported only when the deformable engine runs

    workdir = tempfile.mkdtemp(prefix="sslmedsam2-syn-")
    try:
        binary = sitk.Cast(mask > 0, sitk.sitkFloat32)
        liver = sitk.Resample(binary, moving, sitk.Transform(), sitk.sitkLinear)
        transforms = _register(ants.from_sitk(normalised(fixed)), ants.from_sitk(normalised(moving)),
                               config, workdir, ants.from_sitk(liver))
        reference = ants.from_sitk(sitk.Cast(query, sitk.sitkFloat32))

        def carried(moved: sitk.Image) -> np.ndarray:
            warped = ants.apply_transforms(reference, ants.from_sitk(moved), transforms,
                                           interpolator="linear")
            return sitk.GetArrayFromImage(ants.to_sitk(warped)).astype(np.float32)

        return (np.clip(carried(binary), 0.0, 1.0),
                carried(normalised(image)) if with_image else None)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


STARTS = ("affine", "similarity")

#: ANTs' ITK reads its thread count from the environment, once per process, at its first use
ITK_THREADS = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


def pin_registration_threads() -> bool:
    """Run this process's ANTs registrations (and those of processes it starts) on one thread, so
    that a rerun repeats them bit for bit. Too late once ants is imported: then nothing changes
    and it returns False. SimpleITK keeps its own thread count."""
    if os.environ.get(ITK_THREADS) == "1":
        return True
    if "ants" in sys.modules:
        return False
    own = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    os.environ[ITK_THREADS] = "1"
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(own)
    return True


def unpinned_environment() -> dict[str, str]:
    """This process's environment less the thread pin, for a child process that must choose its
    ANTs threads itself, as a freshly started container does."""
    return {key: value for key, value in os.environ.items() if key != ITK_THREADS}


def _register(fixed: ants.ANTsImage, moving: ants.ANTsImage, config: SynConfig, workdir: str,
              liver: ants.ANTsImage) -> list[str]:
    """The forward transform files of ``moving`` -> ``fixed`` under ``config``'s start;
    ``liver``: the support's mask on ``moving``'s grid (a soft map)."""
    import ants

    if config.start not in STARTS:
        raise ValueError(f"SyN start {config.start!r}: choose from {', '.join(STARTS)}")
    syn = dict(flow_sigma=config.flow_sigma, total_sigma=config.total_sigma,
               reg_iterations=config.iterations)
    with _ants_seed(config.seed):
        if config.start == "affine":
            return ants.registration(fixed, moving, type_of_transform=config.transform,
                                     outprefix=os.path.join(workdir, "tx_"), **syn)["fwdtransforms"]
        start = similarity_start(fixed, moving, liver, config.search, workdir)
        return ants.registration(fixed, moving, type_of_transform="SyNOnly", initial_transform=start,
                                 outprefix=os.path.join(workdir, "tx_"), **syn)["fwdtransforms"]


def similarity_start(fixed: ants.ANTsImage, moving: ants.ANTsImage, liver: ants.ANTsImage,
                     search: HeadFootSearch, workdir: str) -> list[str]:
    """ANTs' similarity map of ``moving`` -> ``fixed`` (from the centres of mass), then shifted
    head-foot as ``search`` finds best (a transform file list, the last applied first)."""
    import ants

    start = ants.registration(fixed, moving, type_of_transform="Similarity",
                              outprefix=os.path.join(workdir, "start_"))["fwdtransforms"]
    if search.range_mm <= 0:
        return start
    query = fixed.numpy()

    def shifted(shift: float) -> list[str]:
        if shift == 0:
            return start
        path = os.path.join(workdir, f"head_foot_{shift:+.1f}.mat")
        ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                                        translation=(0.0, 0.0, shift)), path)
        return [path, *start]

    def warped(shift: float) -> np.ndarray:
        return ants.apply_transforms(fixed, liver, shifted(shift), interpolator="linear").numpy() > 0.5

    return shifted(best_shift(query, warped, search))


@contextmanager
def _ants_seed(seed: int | None) -> Iterator[None]:
    """ANTs' sampling seed for the registrations inside, restored after. antspyx 0.6 reads it
    only from its module config (its public switch, ``set_ants_deterministic``, would also pin
    every process-wide ITK thread count to 1 and reseed numpy)."""
    import ants

    if seed == 0:
        raise ValueError("SynConfig.seed must not be 0: ANTs reads 0 as 'seed from the clock'")
    before = ants.config._random_seed
    ants.config._random_seed = seed
    try:
        yield
    finally:
        ants.config._random_seed = before


def normalised(image: sitk.Image) -> sitk.Image:
    """Intensities to 0..1 between the 0.5 and 99.5 percentiles: MRI scales differ per scanner."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    low, high = np.percentile(array, (0.5, 99.5))
    scaled = sitk.GetImageFromArray(np.clip((array - low) / max(high - low, 1e-6), 0.0, 1.0))
    scaled.CopyInformation(image)
    return scaled
