"""A labelled MRI collection in the shape researchers keep it, read into labelled and unlabelled cases.

Four shapes are recognised, by file names only (voxels are read by :mod:`.check`):

* ``care``: CARE-LiSeg's ``<root>/Vendor_X/<case>/<SEQ>.nii.gz`` (+ ``mask_<SEQ>.nii.gz``).
* ``nnunet``: nnU-Net's raw dataset, ``imagesTr/<case>_0000.nii.gz`` + ``labelsTr/<case>.nii.gz``;
  images in ``imagesTs/`` (or in ``imagesTr/`` without a label) are unlabelled.
* ``folders``: ``images/<name>`` + ``masks/<name>`` (or ``labels/``, ``labelsTr/``), matched by name.
* ``flat``: one folder of ``<case>_image.nii.gz`` beside ``<case>_liver.nii.gz`` (or ``_mask``,
  ``_label``, ``_seg``, ``_gt``): how CHAOS is shared, and how many people keep their own data.

A collection has one sequence except CARE's: the name the run gives its models and reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sslmedsam2.errors import InputError, LayoutError
from sslmedsam2.io import is_volume_file, volume_stem
from sslmedsam2.pseudo_label import Query, find_queries
from sslmedsam2.supports import Support, find_supports

LAYOUTS = ("auto", "care", "nnunet", "folders", "flat")
MASK_FOLDERS = ("masks", "labels", "labelsTr", "segmentations")
IMAGE_FOLDERS = ("images", "imagesTr")
#: ``<case>_<tag>`` endings of flat collections; an image may also have no tag at all.
MASK_TAGS = ("liver", "mask", "label", "labels", "seg", "segmentation", "gt")
IMAGE_TAGS = ("image", "img", "0000")


@dataclass
class Collection:
    """What a folder holds for one sequence: cases with masks, cases without, and what is wrong."""

    root: Path
    layout: str
    sequence: str
    labelled: list[Support] = field(default_factory=list)
    unlabelled: list[Query] = field(default_factory=list)
    problems: list[InputError] = field(default_factory=list)

    @property
    def cases(self) -> list[str]:
        return sorted([s.case for s in self.labelled] + [q.case for q in self.unlabelled])

    def summary(self) -> str:
        return (f"{self.root} ({self.layout} layout, {self.sequence}): {len(self.labelled)} "
                f"labelled + {len(self.unlabelled)} unlabelled case(s)")


def detect_layout(root: Path) -> str:
    """The shape of ``root`` by its names; LayoutError when it fits none."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a folder")
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        return "nnunet"
    if _first_dir(root, IMAGE_FOLDERS) and _first_dir(root, MASK_FOLDERS):
        return "folders"
    if any(is_volume_file(p) for p in root.iterdir()):
        return "flat"
    if find_queries(root, "GED4"):
        return "care"
    raise LayoutError(
        f"{root}: unknown collection layout: expected CARE (Vendor_X/<case>/GED4.nii.gz), nnU-Net "
        "raw (imagesTr/ + labelsTr/), images/ + masks/ (or labels/) matched by name, or one folder "
        "of <case>_image + <case>_liver (or _mask, _label, _seg) volumes")


def read_collection(root: Path, sequence: str = "GED4", layout: str = "auto") -> Collection:
    """Labelled and unlabelled cases of ``root``; problems are collected, not raised."""
    root = Path(root)
    layout = detect_layout(root) if layout == "auto" else layout
    readers = {"care": _care, "nnunet": _nnunet, "folders": _folders, "flat": _flat}
    if layout not in readers:
        raise LayoutError(f"{root}: unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    return readers[layout](root, sequence)


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _volumes(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_volume_file(p)) if folder.is_dir() else []


def _care(root: Path, sequence: str) -> Collection:
    labelled = find_supports(root, sequence)
    names = {s.case for s in labelled}
    unlabelled = [q for q in find_queries(root, sequence) if q.case not in names]
    return Collection(root, "care", sequence, labelled, unlabelled)


def _nnunet(root: Path, sequence: str) -> Collection:
    collection = Collection(root, "nnunet", sequence)
    masks = {volume_stem(p): p for p in _volumes(root / "labelsTr")}
    images: dict[str, Path] = {}
    for folder in ("imagesTr", "imagesTs"):
        for path in _volumes(root / folder):
            stem = volume_stem(path)
            case, _, channel = stem.rpartition("_")
            if not case or not channel.isdigit():
                collection.problems.append(InputError(path, "not named <case>_0000 (nnU-Net's "
                                                      "channel suffix)"))
            elif channel != "0000":
                collection.problems.append(InputError(path, "only single-channel datasets are "
                                                      "supported (channel _0000)"))
            else:
                images[case] = path
    _pair(collection, images, masks)
    return collection


def _folders(root: Path, sequence: str) -> Collection:
    collection = Collection(root, "folders", sequence)
    images = {volume_stem(p): p for p in _volumes(_first_dir(root, IMAGE_FOLDERS))}
    masks = {volume_stem(p): p for p in _volumes(_first_dir(root, MASK_FOLDERS))}
    # nnU-Net style channel suffixes on images only: "<case>_0000" pairs with "<case>"
    images = {_strip_tag(stem, ("0000",)) if _strip_tag(stem, ("0000",)) in masks else stem: path
              for stem, path in images.items()}
    _pair(collection, images, masks)
    return collection


def _flat(root: Path, sequence: str) -> Collection:
    collection = Collection(root, "flat", sequence)
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for path in _volumes(root):
        stem = volume_stem(path)
        mask_case = _strip_tag(stem, MASK_TAGS)
        if mask_case != stem:
            masks[mask_case] = path
        else:
            images[_strip_tag(stem, IMAGE_TAGS)] = path
    _pair(collection, images, masks)
    return collection


def _strip_tag(stem: str, tags: tuple[str, ...]) -> str:
    """``case_liver`` -> ``case`` for a tag in ``tags`` (any case, ``_`` or ``-``); else ``stem``."""
    for tag in tags:
        for sep in ("_", "-"):
            if stem.lower().endswith(f"{sep}{tag.lower()}") and len(stem) > len(tag) + 1:
                return stem[: -len(tag) - 1]
    return stem


def _pair(collection: Collection, images: dict[str, Path], masks: dict[str, Path]) -> None:
    """Images with a mask are labelled, images without one unlabelled, masks without an image
    are problems (a typo in a name must not silently drop a label)."""
    for case in sorted(images):
        if case in masks:
            collection.labelled.append(Support(case, images[case], masks[case]))
        else:
            collection.unlabelled.append(Query(case, images[case]))
    for case in sorted(set(masks) - set(images)):
        collection.problems.append(InputError(masks[case], f"mask without an image (no image "
                                              f"named like case {case!r})"))
