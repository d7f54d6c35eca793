"""Evaluate a folder of predicted masks against a folder of ground-truth masks.

Pairing rule (files with any suffix of :data:`sslmedsam2.io.VOLUME_SUFFIXES`; dot-files ignored):

* predictions: ``<pred>/**/<case>/<SEQ>_pred.<ext>`` is keyed ``(case, SEQ)`` (the CARE output
  layout ``LiSeg_pred/<case>/<SEQ>_pred.nii.gz``); ``<pred>/<name>_pred.<ext>`` directly in the
  folder is keyed ``(name, "")``. Other volume files are ignored (logged).
* ground truth: ``<gt>/**/<case>/mask_<SEQ>.<ext>`` is keyed ``(case, SEQ)`` (the CARE convention,
  e.g. ``gt/Vendor_A/0001-A/mask_GED4.nii.gz``); ``<gt>/<name>.<ext>`` directly in the folder is
  keyed ``(name, "")``. Images beside the masks (``GED4.nii.gz``) are ignored. A labelled
  collection (``imagesTr/`` + ``labelsTr/``, ``images/`` + ``masks/``, ``<case>_image`` +
  ``<case>_liver``) gives its masks keyed ``(case, "")``, and a prediction named after a case's
  image (``<case>_image_pred``, ``<case>_0000_pred``, what ``infer`` writes for it) is that case's.
* two files with the same key on one side are an error (:class:`InputError`), never a silent pick.
* a ground truth without prediction is scored as an empty prediction (Dice 0, HD = HD95 = image
  diagonal, see :mod:`sslmedsam2.evaluation.metrics`) with a note in ``error``; a prediction without ground
  truth is reported with an error and no metrics.

A prediction off the ground truth's grid (size, spacing, origin, direction) or an unreadable file is
recorded as an error for that case, so one bad case does not hide the others.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from sslmedsam2.errors import InputError, LayoutError, SSLMedSAM2Error
from sslmedsam2.evaluation.metrics import compute_metrics
from sslmedsam2.io import is_volume_file, same_grid, volume_stem, write_text_atomic

if TYPE_CHECKING:
    from sslmedsam2.datasets.collection import Collection

log = logging.getLogger(__name__)

PRED_SUFFIX = "_pred"
GT_PREFIX = "mask_"
MISSING_PREDICTION = "missing prediction (scored as an empty mask)"
MISSING_GROUND_TRUTH = "no ground truth for this prediction"
CSV_COLUMNS = ("case", "sequence", "dice", "hd_mm", "hd95_mm", "pred_path", "gt_path", "error")

Key = tuple[str, str]


@dataclass
class CaseResult:
    """One (case, sequence) row; metrics are None when they could not be computed."""

    case: str
    sequence: str
    dice: float | None
    hd: float | None  # maximum Hausdorff distance, mm
    hd95: float | None  # 95th percentile Hausdorff distance, mm
    pred_path: str | None
    gt_path: str | None
    error: str | None

    @property
    def label(self) -> str:
        return f"{self.case}/{self.sequence}" if self.sequence else self.case


def evaluate_folders(pred_dir: Path, gt_dir: Path, progress: bool = True,
                     sequences: Iterable[str] | None = None) -> list[CaseResult]:
    """Pair predictions with ground truth (see the module docstring) and score every pair.

    ``sequences`` restricts scoring to those sequences (plain-layout pairs have none and are kept),
    e.g. GED4 only when the challenge requires GED4 and the other sequences are optional.
    """
    gts, cases_of_images = _ground_truth(Path(gt_dir))
    preds = {(cases_of_images.get(name, name) if not sequence else name, sequence): path
             for (name, sequence), path in find_predictions(Path(pred_dir)).items()}
    if sequences is not None:
        wanted = set(sequences) | {""}
        preds = {k: v for k, v in preds.items() if k[1] in wanted}
        gts = {k: v for k, v in gts.items() if k[1] in wanted}
    if not gts:
        raise LayoutError(f"{gt_dir}: no ground-truth masks found (expected <case>/mask_<SEQ>.nii.gz "
                          "in subfolders, <name>.nii.gz directly in the folder, or a labelled "
                          "collection: imagesTr/ + labelsTr/, images/ + masks/, <case>_image + "
                          "<case>_liver)")
    keys = sorted(set(preds) | set(gts))
    results = []
    for key in tqdm(keys, desc="evaluating", unit="mask", file=sys.stderr, disable=not progress):
        results.append(evaluate_pair(key, preds.get(key), gts.get(key)))
    return results


def _ground_truth(gt_dir: Path) -> tuple[dict[Key, Path], dict[str, str]]:
    """Ground truth by key, and each image name a prediction may carry mapped to its case
    (``p01_image`` -> ``p01``, ``liver_001_0000`` -> ``liver_001``) when ``gt_dir`` is a labelled
    collection; any other folder follows the pairing rule above."""
    collection = labelled_collection(gt_dir)
    if collection is None:
        return find_ground_truth(gt_dir), {}
    for problem in collection.problems:
        log.warning("%s", problem)
    return ({(s.case, ""): s.mask for s in collection.labelled},
            {volume_stem(s.image): s.case for s in collection.labelled})


def labelled_collection(folder: Path) -> Collection | None:
    """``folder`` read as a labelled collection (nnU-Net raw, images/ + masks/, flat pairs; what
    ``train`` reads), or None when it is not one with masks. CARE folders keep the pairing rule."""
    from sslmedsam2.datasets.collection import detect_layout, read_collection

    try:
        layout = detect_layout(folder)
    except LayoutError:
        return None
    collection = None if layout == "care" else read_collection(folder, "", layout)
    return collection if collection is not None and collection.labelled else None


def find_predictions(pred_dir: Path) -> dict[Key, Path]:
    """Prediction files by (case, sequence); see the module docstring."""
    found: dict[Key, Path] = {}
    for path in _volume_files(pred_dir):
        stem = volume_stem(path)
        if not stem.endswith(PRED_SUFFIX) or stem == PRED_SUFFIX:
            log.info("ignoring %s: prediction names end in %s", path, PRED_SUFFIX)
            continue
        name = stem[: -len(PRED_SUFFIX)]
        key = (name, "") if path.parent == pred_dir else (path.parent.name, name)
        _add_unique(found, key, path)
    return found


def find_ground_truth(gt_dir: Path) -> dict[Key, Path]:
    """Ground-truth files by (case, sequence); see the module docstring."""
    found: dict[Key, Path] = {}
    for path in _volume_files(gt_dir):
        stem = volume_stem(path)
        if path.parent == gt_dir:
            _add_unique(found, (stem, ""), path)
        elif stem.startswith(GT_PREFIX) and stem != GT_PREFIX:
            _add_unique(found, (path.parent.name, stem[len(GT_PREFIX):]), path)
        else:
            log.debug("ignoring %s: ground-truth names in case folders start with %s", path, GT_PREFIX)
    return found


def _volume_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    return sorted(p for p in folder.rglob("*") if is_volume_file(p))


def _add_unique(found: dict[Key, Path], key: Key, path: Path) -> None:
    if key in found:
        raise InputError(path, f"same case/sequence {key} as {found[key]}; keep one of the two files")
    found[key] = path


def evaluate_pair(key: Key, pred_path: Path | None, gt_path: Path | None) -> CaseResult:
    """Score one pair; problems with the files become the row's ``error``, not an exception."""
    result = CaseResult(case=key[0], sequence=key[1], dice=None, hd=None, hd95=None,
                        pred_path=str(pred_path) if pred_path else None,
                        gt_path=str(gt_path) if gt_path else None, error=None)
    if gt_path is None:
        result.error = MISSING_GROUND_TRUTH
        return result
    try:
        gt = read_mask(gt_path)
        pred = read_mask(pred_path) if pred_path else None
        if pred is not None:
            check_grid(pred, gt, pred_path, gt_path)
    except SSLMedSAM2Error as exc:
        result.error = str(exc)
        return result
    gt_array = sitk.GetArrayViewFromImage(gt) > 0
    if pred is None:
        pred_array = np.zeros_like(gt_array)
    else:
        pred_array = sitk.GetArrayViewFromImage(pred) > 0
    metrics = compute_metrics(pred_array, gt_array, tuple(reversed(gt.GetSpacing())))
    result.dice, result.hd, result.hd95 = metrics.dice, metrics.hd, metrics.hd95
    result.error = None if pred is not None else MISSING_PREDICTION
    return result


def read_mask(path: Path) -> sitk.Image:
    """Read a 3D scalar mask. Unlike io.read_volume, constant (e.g. all-zero) masks are valid."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or ["unknown reason"]
        raise InputError(path, f"cannot be read as an image ({lines[-1][:160]})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"vector image with {image.GetNumberOfComponentsPerPixel()} components; "
                         "expected a scalar mask")
    if image.GetDimension() != 3 or min(image.GetSize()) == 0:
        raise InputError(path, f"{image.GetDimension()}D image of size {image.GetSize()}; "
                         "expected a 3D mask")
    return image


def check_grid(pred: sitk.Image, gt: sitk.Image, pred_path: Path, gt_path: Path) -> None:
    """Metrics are only meaningful voxel by voxel on the same grid; say which property differs."""
    if same_grid(pred, gt):
        return
    diffs = [f"{name} {_rounded(getter(pred))} vs {_rounded(getter(gt))}" for name, getter in (
        ("size", sitk.Image.GetSize), ("spacing", sitk.Image.GetSpacing),
        ("origin", sitk.Image.GetOrigin), ("direction", sitk.Image.GetDirection),
    ) if not np.allclose(getter(pred), getter(gt), atol=1e-5)]
    raise InputError(pred_path, f"not on the grid of its ground truth {gt_path}: {'; '.join(diffs)}")


def _rounded(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(v, 6) if isinstance(v, float) else v for v in values)


def write_csv(results: Sequence[CaseResult], path: Path | str) -> Path:
    """Write one row per result, atomically (temporary name in the same folder, then rename)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(["" if v is None else v for v in astuple(r)] for r in results)
    return write_text_atomic(buffer.getvalue(), path)


def summary_table(results: Sequence[CaseResult]) -> str:
    """Per-sequence N, mean, std (population), median of Dice, HD and HD95, leaderboard-style."""
    scored = [r for r in results if r.dice is not None]
    sequences = sorted({r.sequence for r in scored})
    groups = [(s or "-", [r for r in scored if r.sequence == s]) for s in sequences]
    if len(groups) > 1:
        groups.append(("all", scored))
    header = ["sequence", "N"] + [f"{m} {stat}" for m in ("Dice", "HD", "HD95")
                                  for stat in ("mean", "std", "median")]
    rows = [[name, str(len(group))] + _stat_cells(group) for name, group in groups]
    lines = [
        "HD = maximum (100th percentile) symmetric Hausdorff distance, HD95 = 95th percentile; "
        "both in mm. std is the population standard deviation.",
        *aligned_table([header] + rows),
        _problem_line(results),
    ]
    return "\n".join(lines)


def _stat_cells(group: Sequence[CaseResult]) -> list[str]:
    cells = []
    for values, fmt in (([r.dice for r in group], "{:.4f}"), ([r.hd for r in group], "{:.2f}"),
                        ([r.hd95 for r in group], "{:.2f}")):
        array = np.asarray(values, dtype=float)
        cells += [fmt.format(array.mean()), fmt.format(array.std()), fmt.format(np.median(array))]
    return cells


def aligned_table(rows: list[list[str]]) -> list[str]:
    """Text table lines: header, a rule, then rows; first column left, the others right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    def line(row: list[str]) -> str:  # first column left-aligned, numbers right-aligned
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells)

    lines = [line(row) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _problem_line(results: Sequence[CaseResult]) -> str:
    missing = sum(1 for r in results if r.pred_path is None)
    no_gt = sum(1 for r in results if r.gt_path is None)
    errors = sum(1 for r in results if r.dice is None and r.gt_path is not None)
    return (f"{len(results)} pairs: {errors} errors (not scored), {missing} missing predictions "
            f"(scored as empty masks), {no_gt} predictions without ground truth (not scored)")


def failures(results: Iterable[CaseResult], min_dice: float | None) -> list[str]:
    """One line per case the CLI should fail on: errors, missing files, Dice below ``min_dice``."""
    messages = []
    for r in results:
        if r.error is not None:
            messages.append(f"{r.label}: {r.error}")
        elif min_dice is not None and r.dice is not None and r.dice < min_dice:
            messages.append(f"{r.label}: Dice {r.dice:.4f} below the minimum {min_dice:.4f} "
                            f"({r.pred_path})")
    return messages
