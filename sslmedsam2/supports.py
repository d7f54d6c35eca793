"""Labelled support cases for the few-shot engines (SAM2 memory, atlas registration).

A support is a GED4 image with its liver mask, named as in CARE's training data. Two folder shapes
are accepted: one folder per case (``<dir>/<case>/GED4.nii.gz`` + ``mask_GED4.nii.gz``, what
``weights/supports/`` holds), or a CARE training root (``<dir>/Vendor_X/<case>/...``). Only cases
with a mask count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from sslmedsam2.errors import InputError
from sslmedsam2.io import read_volume, volume_stem, volume_suffix
from sslmedsam2.sequences import GED4


@dataclass(frozen=True)
class Support:
    case: str
    image: Path
    mask: Path
    vendor: str | None = None


#: Where a weights folder keeps its supports (an export holds one sequence for all of them).
WEIGHTS_SUPPORTS_DIR = "supports"


def weights_supports(weights_dir: Path) -> list[Support]:
    """The supports of a weights folder, whatever their sequence: every engine and the weights
    check read them here, so they cannot disagree on what a folder serves."""
    return find_supports(Path(weights_dir) / WEIGHTS_SUPPORTS_DIR, sequence=None)


def support_sequence(supports: list[Support]) -> str:
    """The sequence an exported weights folder's supports hold (one for all of them; GED4 when
    there are none)."""
    return volume_stem(supports[0].image) if supports else GED4


def find_supports(root: Path, sequence: str | None = GED4) -> list[Support]:
    """Every case under ``root`` (one or two levels down) with ``<SEQ>`` and ``mask_<SEQ>``;
    ``sequence=None`` takes any sequence (an exported weights folder holds one)."""
    root = Path(root)
    if not root.is_dir():
        return []
    supports = []
    pattern = f"mask_{sequence or '*'}.*"
    for mask in sorted(root.glob(f"*/{pattern}")) + sorted(root.glob(f"*/*/{pattern}")):
        name = volume_stem(mask).removeprefix("mask_")
        if volume_suffix(mask) is None or name != (sequence or name):
            continue
        image = next((p for p in sorted(mask.parent.iterdir())
                      if volume_suffix(p) and volume_stem(p) == name), None)
        if image is None:
            continue
        vendor = mask.parent.parent.name if mask.parent.parent != root else None
        supports.append(Support(case=mask.parent.name, image=image, mask=mask,
                                vendor=_vendor_name(vendor)))
    return supports


def _vendor_name(folder: str | None) -> str | None:
    return folder.removeprefix("Vendor_") if folder else None


def same_vendor_first(supports: list[Support], vendor: str | None) -> list[Support]:
    """Supports of the query's vendor when there are any (the paper's choice), else all of them."""
    vendor = _vendor_name(vendor)
    matching = [s for s in supports if vendor is not None and s.vendor == vendor]
    return matching or supports


def load_support(support: Support) -> tuple[sitk.Image, sitk.Image]:
    """The support's validated image and its mask, the mask on the image's grid."""
    image = read_volume(support.image)
    mask = sitk.ReadImage(str(support.mask))
    if mask.GetSize() != image.GetSize():
        raise InputError(support.mask, f"support mask size {mask.GetSize()} differs from its "
                         f"image {support.image.name} {image.GetSize()}")
    mask.CopyInformation(image)  # tiny header differences must not misplace the mask
    if not sitk.GetArrayViewFromImage(mask).any():
        raise InputError(support.mask, "support mask is empty")
    return image, mask
