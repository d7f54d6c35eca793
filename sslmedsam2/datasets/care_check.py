"""Check a CARE-LiSeg data folder before days of work start on it.

A reproduction that dies in round 2 on an unreadable file, or trains on a mask that does not lie on
its image, wastes GPU days. Every file is opened here (header only, so 360 cases take seconds) and
every problem is named with its file; the caller refuses to start while any remains. What was
found (cases per vendor, labelled cases, sequences present) is summarised for the log.

Layout (``../docs`` of the challenge): ``<root>/Vendor_X/<case>/<SEQ>.nii.gz``, GED4 required,
other sequences optional; training roots hold ``mask_GED4.nii.gz`` in the labelled cases;
validation roots may hold ``info.csv`` (Case, Vendor, Missing Modality).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sslmedsam2.container.layouts import case_volumes, read_info_csv
from sslmedsam2.evaluation.folders import find_ground_truth
from sslmedsam2.io import itk_reason
from sslmedsam2.sequences import CARE_SEQUENCES, GED4

MASK = f"mask_{GED4}"


@dataclass
class Header:
    """The grid of a volume, read without its voxels."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def differs_from(self, other: "Header") -> list[str]:
        return [name for name in ("size", "spacing", "origin", "direction")
                if not np.allclose(getattr(self, name), getattr(other, name), atol=1e-4)]


@dataclass
class RootReport:
    """What one root holds: per case its vendor and sequences, which are labelled, what is wrong."""

    root: Path
    role: str  # "training", "validation" or "validation ground truth"
    vendors: dict[str, str] = field(default_factory=dict)  # case -> vendor
    sequences: dict[str, list[str]] = field(default_factory=dict)  # case -> sequences present
    labelled: list[str] = field(default_factory=list)
    headers: dict[tuple[str, str], Header] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        per_vendor = Counter(self.vendors.values())
        labelled = Counter(self.vendors[c] for c in self.labelled)
        vendors = ", ".join(f"{v} {n}" + (f" ({labelled[v]} labelled)" if self.labelled else "")
                            for v, n in sorted(per_vendor.items()))
        present = Counter(s for seqs in self.sequences.values() for s in seqs)
        sequences = ", ".join(f"{s} {present[s]}" for s in CARE_SEQUENCES if present[s])
        return (f"{self.role} {self.root}: {len(self.vendors)} cases [{vendors or 'none'}]; "
                f"sequences: {sequences or 'none'}"
                + (f"; {len(self.labelled)} labelled (mask_GED4)" if self.role == "training" else ""))


def read_header(path: Path) -> Header:
    """Size, spacing, origin, direction from the file's header; RuntimeError when unreadable."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if reader.GetDimension() != 3:
        raise RuntimeError(f"{reader.GetDimension()}D image, expected 3D")
    return Header(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                  tuple(reader.GetDirection()))


def check_root(root: Path, role: str, labelled: bool) -> RootReport:
    """Every case folder under ``root``: GED4 present, every volume readable, every mask on its
    image's grid. ``labelled``: masks are expected (training root)."""
    report = RootReport(Path(root), role)
    if not report.root.is_dir():
        report.problems.append(f"{root}: not a folder (expected the CARE {role} root)")
        return report
    vendor_dirs = sorted(p for p in report.root.iterdir() if p.is_dir())
    if not vendor_dirs:
        report.problems.append(f"{root}: no Vendor_X/<case>/ folders")
    info = read_info_csv(report.root / "info.csv") if role == "validation" else {}
    for vendor_dir in vendor_dirs:
        for case_dir in sorted(p for p in vendor_dir.iterdir() if p.is_dir()):
            _check_case(case_dir, report, labelled, info)
    if not report.vendors and vendor_dirs:
        report.problems.append(f"{root}: no case folder holds a CARE volume (e.g. GED4.nii.gz)")
    if labelled and report.vendors and not report.labelled:
        report.problems.append(f"{root}: no case has {MASK}.nii.gz; nothing to learn from")
    for case in sorted(set(info) - set(report.vendors)):
        report.problems.append(f"{report.root / 'info.csv'}: lists {case}, which has no folder")
    return report


def _check_case(case_dir: Path, report: RootReport, labelled: bool, info: dict[str, str]) -> None:
    files = case_volumes(case_dir)
    sequences = [s for s in CARE_SEQUENCES if s in files]
    if not sequences and MASK not in files:
        return  # not a case folder
    case = case_dir.name
    report.vendors[case] = info.get(case, case_dir.parent.name).removeprefix("Vendor_")
    report.sequences[case] = sequences
    if GED4 not in files:
        report.problems.append(f"{case_dir}: no GED4 volume (GED4.nii.gz is required; other "
                               "sequences may be missing)")
    for name, path in files.items():
        if name not in CARE_SEQUENCES and name != MASK:
            continue
        try:
            report.headers[(case, name)] = read_header(path)
        except RuntimeError as exc:
            report.problems.append(f"{path}: unreadable ({itk_reason(str(exc))})")
    if MASK in files:
        if not labelled:
            return
        report.labelled.append(case)
        mask, image = report.headers.get((case, MASK)), report.headers.get((case, GED4))
        if mask is not None and image is not None and mask.differs_from(image):
            report.problems.append(f"{files[MASK]}: not on the grid of {files[GED4].name} "
                                   f"({', '.join(mask.differs_from(image))} differ)")


def check_ground_truth(gt_root: Path, validation: RootReport) -> RootReport:
    """Validation masks (``<case>/mask_<SEQ>``): each for a validation case, on its image's grid."""
    report = RootReport(Path(gt_root), "validation ground truth")
    try:
        found = find_ground_truth(report.root)
    except Exception as exc:  # InputError: not a folder, or two masks for one case
        report.problems.append(str(exc))
        return report
    if not found:
        report.problems.append(f"{gt_root}: no <case>/mask_<SEQ>.nii.gz files")
    for (case, sequence), path in sorted(found.items()):
        report.vendors[case] = validation.vendors.get(case, "?")
        report.sequences.setdefault(case, []).append(sequence)
        image = validation.headers.get((case, sequence))
        if image is None:
            report.problems.append(f"{path}: no validation image {case}/{sequence} to compare with")
            continue
        try:
            mask = read_header(path)
        except RuntimeError as exc:
            report.problems.append(f"{path}: unreadable ({itk_reason(str(exc))})")
            continue
        if mask.differs_from(image):
            report.problems.append(f"{path}: not on the grid of the validation {sequence} image "
                                   f"({', '.join(mask.differs_from(image))} differ)")
    return report
