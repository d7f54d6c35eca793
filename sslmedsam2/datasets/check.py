"""Everything wrong with a collection, named per file, before anything trains.

Headers are read without voxels; masks (small) are read whole to find empty ones. A collection
with problems is refused as a whole, the way ``reproduce`` refuses a CARE root: a run that would
train on a mislabelled case is worse than no run.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from sslmedsam2.datasets.care_check import Header, read_header
from sslmedsam2.datasets.collection import Collection
from sslmedsam2.errors import InputError, SSLMedSAM2Error
from sslmedsam2.io import itk_reason

log = logging.getLogger(__name__)


class CollectionError(SSLMedSAM2Error):
    """A collection has problems; the message lists every one."""


def check_collection(collection: Collection, need_labels: bool = True) -> list[InputError]:
    """Problems found by name (``collection.problems``) plus unreadable files, masks off their
    image's grid, empty masks and, when ``need_labels``, a collection without any mask."""
    problems = list(collection.problems)
    for query in collection.unlabelled:
        _header(query.image, problems)
    for support in collection.labelled:
        image, mask = _header(support.image, problems), _header(support.mask, problems)
        if image is None or mask is None:
            continue
        differs = mask.differs_from(image)
        if differs:
            problems.append(InputError(support.mask, f"mask off its image's grid ({', '.join(differs)} "
                                       f"differ from {support.image.name})"))
        elif _empty(support.mask, problems):
            problems.append(InputError(support.mask, "mask is empty (no foreground voxel)"))
    if need_labels and not collection.labelled:
        problems.append(InputError(collection.root, "no labelled case (no mask matched to an image)"))
    return problems


def require_clean(collection: Collection, need_labels: bool = True) -> Collection:
    """``collection`` when :func:`check_collection` finds nothing; else every problem is logged
    and one error with the count is raised."""
    problems = check_collection(collection, need_labels)
    if problems:
        for problem in problems:
            log.error("%s", problem)
        raise CollectionError(f"{collection.root}: {len(problems)} problem(s) in the collection "
                              f"(first: {problems[0]}); fix them and run again")
    log.info("%s", collection.summary())
    return collection


def _header(path, problems: list[InputError]) -> Header | None:
    try:
        return read_header(path)
    except RuntimeError as exc:
        problems.append(InputError(path, f"cannot be read ({itk_reason(str(exc))})"))
        return None


def _empty(path, problems: list[InputError]) -> bool:
    try:
        mask = sitk.ReadImage(str(path))  # kept alive: the view does not own its voxels
        return not np.any(sitk.GetArrayViewFromImage(mask))
    except RuntimeError as exc:
        problems.append(InputError(path, f"cannot be read ({itk_reason(str(exc))})"))
        return False
