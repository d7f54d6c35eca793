"""One overlay picture per scored case: prediction and ground truth drawn on the image.

A table of Dice says which cases failed; only a picture says how (a missed lobe, a leak onto the
bowel, a mask slices off). Files are numbered worst Dice first, so a reader opens the failures
before the successes. The image is found beside the ground truth (CARE keeps ``GED4.nii.gz``
beside ``mask_GED4.nii.gz``) or in an images folder: the CARE input layout
(``**/<case>/<SEQ>.*``) or a plain one (``<name>.*``, ``<name>_0000.*``, ``<name>_image.*``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from sslmedsam2.errors import SSLMedSAM2Error
from sslmedsam2.evaluation.folders import CaseResult, read_mask
from sslmedsam2.evaluation.montage import save_overlay_montage
from sslmedsam2.io import is_volume_file, read_volume, volume_stem

log = logging.getLogger(__name__)

#: what a plain-layout image may be called, for a ground truth ``<name>.*``
PLAIN_IMAGE_STEMS = ("{name}", "{name}_0000", "{name}_image")


def save_case_montages(results: Iterable[CaseResult], out_dir: Path, images_dir: Path | None = None,
                       progress: bool = True, worst: int | None = None,
                       images_by_case: Mapping[str, Path] | None = None) -> list[Path]:
    """A PNG per scored case in ``out_dir`` (only the ``worst`` lowest Dice when given),
    ``<rank>_<case>[_<SEQ>].png`` with rank 1 the worst Dice. ``images_by_case``: images already
    known (a labelled collection's), looked up first. A case whose image cannot be found or read
    is skipped with a warning naming it."""
    scored = sorted((r for r in results if r.dice is not None), key=lambda r: (r.dice, r.label))[:worst]
    case_images = _case_folder_images(images_dir)
    known = images_by_case or {}
    written = []
    for rank, result in enumerate(tqdm(scored, desc="montages", unit="case", disable=not progress), 1):
        image_path = known.get(result.case) or find_image(result, images_dir, case_images)
        if image_path is None:
            where = f" or in {images_dir}" if images_dir else " (give --images DIR)"
            log.warning("%s: no image beside %s%s; no picture", result.label, result.gt_path, where)
            continue
        try:
            image = read_volume(image_path)
        except SSLMedSAM2Error as exc:
            log.warning("%s: %s; no picture", result.label, exc)
            continue
        name = f"{rank:03d}_{result.label.replace('/', '_')}.png"
        title = f"{result.label}: Dice {result.dice:.3f}, HD95 {result.hd95:.1f} mm"
        written.append(save_overlay_montage(image, _masks(result, image), out_dir / name, title=title))
    return written


def save_label_montages(labels: Iterable[tuple[str, Path, Path]], out_dir: Path, title: str,
                        progress: bool = True) -> list[Path]:
    """A PNG per (name, image, mask) in ``out_dir``, ``<name>.png``: masks without a ground truth
    to score them (pseudo labels), drawn so a reader sees at a glance which ones went astray."""
    written = []
    for name, image_path, mask_path in tqdm(list(labels), desc="montages", unit="case", disable=not progress):
        try:
            image, mask = read_volume(image_path), read_mask(mask_path)
        except SSLMedSAM2Error as exc:
            log.warning("%s: %s; no picture", name, exc)
            continue
        written.append(save_overlay_montage(image, {title: mask}, out_dir / f"{name}.png", title=name))
    return written


def find_image(result: CaseResult, images_dir: Path | None,
               case_images: dict[tuple[str, str], Path]) -> Path | None:
    """The image a case's masks lie on, or None; ``case_images`` indexes ``images_dir``'s case
    folders (:func:`_case_folder_images`)."""
    gt = Path(result.gt_path) if result.gt_path else None
    if result.sequence and gt is not None:
        beside = _named(gt.parent, (result.sequence,))
        if beside is not None:
            return beside
    if images_dir is None or not images_dir.is_dir():
        return None
    if result.sequence:
        return case_images.get((result.case, result.sequence))
    return _named(images_dir, tuple(stem.format(name=result.case) for stem in PLAIN_IMAGE_STEMS))


def _case_folder_images(images_dir: Path | None) -> dict[tuple[str, str], Path]:
    """Every volume below ``images_dir`` by (its folder's name, its name without suffix), walked
    once for all cases; the first in name order wins."""
    index: dict[tuple[str, str], Path] = {}
    if images_dir is not None and images_dir.is_dir():
        for path in sorted(images_dir.rglob("*")):
            if is_volume_file(path):
                index.setdefault((path.parent.name, volume_stem(path)), path)
    return index


def _named(folder: Path, stems: tuple[str, ...]) -> Path | None:
    """The first volume file of ``folder`` whose name without suffix is one of ``stems``."""
    for stem in stems:
        found = sorted(p for p in folder.glob(f"{stem}.*") if volume_stem(p) == stem and is_volume_file(p))
        if found:
            return found[0]
    return None


def _masks(result: CaseResult, image: sitk.Image) -> dict[str, sitk.Image | np.ndarray]:
    """Prediction (empty where it is missing) and ground truth."""
    gt = read_mask(Path(result.gt_path))
    prediction = (read_mask(Path(result.pred_path)) if result.pred_path
                  else np.zeros(image.GetSize()[::-1], np.uint8))
    return {"prediction": prediction, "ground truth": gt}  # red, then green
