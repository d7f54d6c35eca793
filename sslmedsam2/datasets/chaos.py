"""The CHAOS challenge's MR download as a flat collection of NIfTI volumes and liver masks.

CHAOS (Kavur et al. 2021; Zenodo doi 10.5281/zenodo.3431873, CC BY-NC-SA 4.0) ships each MR
patient as DICOM series with one PNG of organ labels per slice:
``<id>/T2SPIR/DICOM_anon/*.dcm`` + ``<id>/T2SPIR/Ground/*.png``, and for T1-DUAL
``<id>/T1DUAL/DICOM_anon/{InPhase,OutPhase}/*.dcm`` + ``<id>/T1DUAL/Ground/*.png``. The PNGs
mark the liver with grey 63 (kidneys 126 and 189, spleen 252). Each PNG is matched to the DICOM
file of the same name (else the two are paired in name order) and stacked in the series'
geometric order, so the mask lands on the slice it was drawn on whatever the instance numbers
say. The output is the ``flat`` layout every command reads: ``<case>_image.nii.gz`` +
``<case>_liver.nii.gz`` on the DICOM series' own grid, or on the grid the few-shot literature
measures on (:mod:`.fewshot_grid`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sslmedsam2.datasets.fewshot_grid import FewShotGrid
from sslmedsam2.errors import InputError
from sslmedsam2.io import itk_reason, mask_image, write_image_atomic

log = logging.getLogger(__name__)

#: sequence name -> (DICOM folder, label folder), relative to a patient folder
SEQUENCES: dict[str, tuple[str, str]] = {
    "T2SPIR": ("T2SPIR/DICOM_anon", "T2SPIR/Ground"),
    "T1DUAL-in": ("T1DUAL/DICOM_anon/InPhase", "T1DUAL/Ground"),
    "T1DUAL-out": ("T1DUAL/DICOM_anon/OutPhase", "T1DUAL/Ground"),
}
#: the CHAOS MR label PNGs' grey range for the liver, lower bound excluded (its value is 63)
LIVER_GREYS = (55, 70)


@dataclass(frozen=True)
class ChaosPatient:
    """One patient's series and label slices for one sequence."""

    case: str
    dicom_dir: Path
    ground_dir: Path

    def outputs(self, out_dir: Path) -> tuple[Path, Path]:
        return out_dir / f"{self.case}_image.nii.gz", out_dir / f"{self.case}_liver.nii.gz"


def find_patients(root: Path, sequence: str) -> list[ChaosPatient]:
    """Every patient folder below ``root`` (the download, ``Train_Sets/MR`` or one patient) that
    holds ``sequence``; cases are named ``chaos_<sequence>_<id>``."""
    if sequence not in SEQUENCES:
        raise ValueError(f"unknown CHAOS sequence {sequence!r}; one of {', '.join(SEQUENCES)}")
    if not root.is_dir():
        raise InputError(root, "not a folder")
    dicom, ground = SEQUENCES[sequence]
    folders = {path.parents[len(Path(dicom).parts) - 1] for path in root.rglob(Path(dicom).name)
               if path.is_dir() and path.as_posix().endswith("/" + dicom)}
    slug = sequence.lower().replace("-", "_")
    return [ChaosPatient(f"chaos_{slug}_{folder.name}", folder / dicom, folder / ground)
            for folder in sorted(folders, key=_patient_order)]


def convert_patient(patient: ChaosPatient, out_dir: Path,
                    grid: FewShotGrid | None = None) -> tuple[Path, Path]:
    """Write the patient's image and liver mask, on the series' own grid or (``grid``) resampled
    onto the few-shot literature's; the mask is written first, the image last, so a case whose
    image exists is complete. Raises :class:`InputError` naming the folder at fault."""
    image, files = _read_series(patient.dicom_dir)
    liver = np.stack([_liver_slice(png, image) for png in _labels_by_slice(patient.ground_dir, files)])
    mask = mask_image(liver, image)
    if grid is not None:
        image, mask = grid.apply(image, mask)
    image_path, mask_path = patient.outputs(out_dir)
    write_image_atomic(mask, mask_path)
    write_image_atomic(image, image_path)
    return image_path, mask_path


def _patient_order(folder: Path) -> tuple[int, str]:
    return (int(folder.name), "") if folder.name.isdigit() else (1 << 30, folder.name)


def _read_series(folder: Path) -> tuple[sitk.Image, list[str]]:
    """The folder's DICOM slices as one volume, and its files in geometric order. CHAOS gives
    each slice file its own identifiers, so slices are ordered by where they lie, not grouped
    by series."""
    files = sorted(str(path) for path in folder.glob("*.dcm")) if folder.is_dir() else []
    if not files:
        raise InputError(folder, "no DICOM files (*.dcm)")
    files.sort(key=_position_along_normal)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute(), files
    except RuntimeError as exc:
        raise InputError(folder, f"its slices do not make one volume ({itk_reason(str(exc))})") from None


def _position_along_normal(file: str) -> float:
    """How far the slice lies along its own normal (ImagePositionPatient . row x column)."""
    header = sitk.ImageFileReader()
    header.SetFileName(file)
    try:
        header.ReadImageInformation()
        position = np.array([float(v) for v in header.GetMetaData("0020|0032").split("\\")])
        cosines = np.array([float(v) for v in header.GetMetaData("0020|0037").split("\\")])
    except (RuntimeError, ValueError) as exc:
        raise InputError(file, f"no slice position in its DICOM header ({str(exc).strip()[:120]})") from None
    return float(position @ np.cross(cosines[:3], cosines[3:]))


def _labels_by_slice(ground: Path, files: list[str]) -> list[Path]:
    """The label PNG of each DICOM file, in the files' order."""
    pngs = sorted(ground.glob("*.png")) if ground.is_dir() else []
    if len(pngs) != len(files):
        raise InputError(ground, f"{len(pngs)} label PNGs for {len(files)} DICOM slices")
    by_name = {png.stem: png for png in pngs}
    if all(Path(f).stem in by_name for f in files):
        return [by_name[Path(f).stem] for f in files]
    log.info("%s: PNG names differ from the DICOM files'; paired in name order", ground)
    in_name_order = dict(zip(sorted(files, key=lambda f: Path(f).name), pngs))
    return [in_name_order[f] for f in files]


def _liver_slice(png: Path, image: sitk.Image) -> np.ndarray:
    """One PNG's liver as a (rows, columns) boolean array on the series' slice."""
    label = sitk.ReadImage(str(png))
    if label.GetNumberOfComponentsPerPixel() > 1:
        label = sitk.VectorIndexSelectionCast(label, 0)
    grey = sitk.GetArrayFromImage(label)
    if grey.shape != (image.GetSize()[1], image.GetSize()[0]):
        raise InputError(png, f"{grey.shape[1]} x {grey.shape[0]} pixels; its DICOM slice is "
                         f"{image.GetSize()[0]} x {image.GetSize()[1]}")
    return (grey > LIVER_GREYS[0]) & (grey <= LIVER_GREYS[1])
