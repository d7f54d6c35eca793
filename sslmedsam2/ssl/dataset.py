"""A round's training set: labelled cases with their masks, unlabelled cases with filtered pseudo labels.

Pseudo labels are judged before they teach anything: an empty, tiny or fragmented label is more
likely a failure of the labeller than a small liver, so the whole case is left out (and the report
says why). Kept labels may lose their uncertain voxels to nnU-Net's ``ignore`` label, which then
contributes no loss: the network is not trained towards what the labeller was unsure of.
A model's prediction keeps its liver, not its largest object: the component that the label the
model itself was trained on overlaps most (a bigger false object would otherwise be taught to
the next round as the liver, as a one-label model did on a real patient).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sslmedsam2.io import write_image_atomic
from sslmedsam2.postprocess import component_most_like, largest_component
from sslmedsam2.ssl.config import PseudoLabelConfig
from sslmedsam2.supports import Support
from sslmedsam2.training.supervised import IGNORE_LABEL

log = logging.getLogger(__name__)

#: Components smaller than this do not count as fragments (speckle is common and harmless).
COMPONENT_MIN_ML = 1.0
#: Nor do components under this share of the label: a round's nnU-Net routinely predicts islands
#: of a few to 90 ml beside a liver of 1-2 litres, which ``largest_component`` removes anyway. Counted
#: from 1 ml, they left out 7 of 8 real patients' labels in a third round (benchmarks/RESULTS.md).
FRAGMENT_MIN_SHARE = 0.1


@dataclass(frozen=True)
class Verdict:
    """Whether a case's pseudo label was used, and the figures that decided it."""

    case: str
    kept: bool
    reason: str
    volume_ml: float
    components: int
    ignored_fraction: float = 0.0


def judge(mask: sitk.Image, config: PseudoLabelConfig, case: str) -> Verdict:
    """Keep or drop a pseudo label by its volume and its number of sizeable components (at least
    ``COMPONENT_MIN_ML`` and ``FRAGMENT_MIN_SHARE`` of the label each)."""
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    voxels = int(sitk.GetArrayViewFromImage(binary).sum())
    volume_ml = voxels * voxel_ml
    min_voxels = max(1, int(round(COMPONENT_MIN_ML / voxel_ml)), int(np.ceil(FRAGMENT_MIN_SHARE * voxels)))
    relabelled = sitk.RelabelComponent(sitk.ConnectedComponent(binary, True),
                                       minimumObjectSize=min_voxels)
    components = int(sitk.GetArrayViewFromImage(relabelled).max())
    if volume_ml == 0:
        return Verdict(case, False, "empty", 0.0, 0)
    if volume_ml < config.min_volume_ml:
        return Verdict(case, False, f"{volume_ml:.0f} ml < {config.min_volume_ml:g} ml",
                       volume_ml, components)
    if config.max_components is not None and components > config.max_components:
        return Verdict(case, False, f"{components} components > {config.max_components}",
                       volume_ml, components)
    return Verdict(case, True, "ok", volume_ml, components)


def training_label(mask: sitk.Image, uncertainty: sitk.Image | None, config: PseudoLabelConfig,
                   guide: sitk.Image | None = None) -> tuple[sitk.Image, float]:
    """The label nnU-Net trains on (0/1, and ``IGNORE_LABEL`` on uncertain voxels) and the
    fraction of voxels ignored. With ``config.largest_component`` one component is kept: the one
    ``guide`` overlaps most (the largest where there is no guide or it overlaps none)."""
    array = sitk.GetArrayFromImage(mask) > 0
    if config.largest_component:
        array = organ_of(array, guide)
    label = array.astype(np.uint8)
    ignored = 0.0
    if config.ignore_uncertainty_above is not None and uncertainty is not None:
        uncertain = sitk.GetArrayViewFromImage(uncertainty) > config.ignore_uncertainty_above
        label[uncertain] = IGNORE_LABEL
        ignored = float(uncertain.mean())
    out = sitk.GetImageFromArray(label)
    out.CopyInformation(mask)
    return out, ignored


def organ_of(array: np.ndarray, guide: sitk.Image | None) -> np.ndarray:
    """The component of ``array`` most like ``guide`` (on the same grid), else the largest."""
    if guide is None or guide.GetSize()[::-1] != array.shape:
        return largest_component(array) > 0
    guide_array = sitk.GetArrayViewFromImage(guide)
    return component_most_like(array, (guide_array > 0) & (guide_array != IGNORE_LABEL)) > 0


def pseudo_labelled_cases(queries: list[Support], out_dir: Path, config: PseudoLabelConfig,
                          guide_dir: Path | None = None) -> tuple[list[Support], list[Verdict]]:
    """Judge each query's pseudo label (``Support.mask``, uncertainty beside it) and write the
    kept ones as training labels under ``out_dir``; returns the kept cases and every verdict.
    ``guide_dir`` holds the training labels of the model that predicted them, if one did
    (``<case>.nii.gz``): each label keeps the component its own earlier label overlaps most."""
    kept, verdicts = [], []
    for query in queries:
        mask = sitk.ReadImage(str(query.mask))
        verdict = judge(mask, config, query.case)
        if verdict.kept:
            uncertainty_path = uncertainty_path_of(query.mask)
            uncertainty = (sitk.ReadImage(str(uncertainty_path))
                           if uncertainty_path.is_file() else None)
            guide_path = guide_dir / f"{query.case}.nii.gz" if guide_dir is not None else None
            guide = sitk.ReadImage(str(guide_path)) if guide_path and guide_path.is_file() else None
            label, ignored = training_label(mask, uncertainty, config, guide)
            target = write_image_atomic(label, out_dir / f"{query.case}.nii.gz")
            verdict = Verdict(**{**verdict.__dict__, "ignored_fraction": round(ignored, 5)})
            kept.append(Support(query.case, query.image, target, query.vendor))
        else:
            log.info("pseudo label of %s left out: %s", query.case, verdict.reason)
        verdicts.append(verdict)
    return kept, verdicts


def uncertainty_path_of(mask_path: Path) -> Path:
    """``<case>/<SEQ>.nii.gz`` -> ``<case>/<SEQ>_uncertainty.nii.gz`` (the pseudo-label layout)."""
    name = mask_path.name.removesuffix(".nii.gz")
    return mask_path.with_name(f"{name}_uncertainty.nii.gz")


def with_labelled_share(labelled: list[Support], pseudo: list[Support], share: float) -> list[Support]:
    """The training set, labelled cases repeated (``<case>_copy<i>``) until they make about
    ``share`` of it; nnU-Net samples cases uniformly, so this is how often a real mask is seen."""
    times = 1
    if share > 0 and labelled and pseudo:
        times = max(1, round(share / (1 - share) * len(pseudo) / len(labelled)))
    copies = [replace(case, case=f"{case.case}_copy{i}") for i in range(1, times) for case in labelled]
    return list(labelled) + copies + list(pseudo)
