"""Input layouts the container understands, turned into a flat list of jobs.

* CARE: ``<input>/<Vendor>/<case>/<SEQ>.nii.gz`` (+ optional ``info.csv``)
  -> ``<output>/LiSeg_pred/<case>/<SEQ>_pred.nii.gz``
* Grand Challenge: ``<input>/inputs.json`` + ``<input>/images/<slug>/<file>.mha``
  -> ``<output>/images/<output-slug>/<file>.mha``
* Plain: one volume file, or a folder of volume files -> ``<output>/<name>_pred.<ext>``

Detection looks only at names, never at voxels, so a corrupt file becomes a per-case error later
instead of hiding the layout.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sslmedsam2.errors import InputError, LayoutError
from sslmedsam2.io import is_volume_file, volume_stem, volume_suffix
from sslmedsam2.sequences import CARE_SEQUENCES, GED4

log = logging.getLogger(__name__)

#: Output suffix per input suffix: masks stay in the input's format family.
_OUTPUT_SUFFIX = {".nii.gz": ".nii.gz", ".nii": ".nii.gz", ".mha": ".mha", ".mhd": ".mha",
                  ".nrrd": ".nrrd"}


@dataclass(frozen=True)
class Job:
    """One volume to segment and where its mask goes."""

    case: str
    sequence: str | None
    input_path: Path
    output_path: Path
    vendor: str | None = None


@dataclass(frozen=True)
class GrandChallengeSlugs:
    """Socket slugs of a Grand Challenge algorithm; None means 'the only image socket'."""

    input_slug: str | None = None
    output_slug: str = "liver-segmentation"


@dataclass
class LayoutPlan:
    """What was found in the input: the layout's name, the jobs, and per-case problems."""

    name: str
    jobs: list[Job]
    problems: list[InputError] = field(default_factory=list)


def detect_layout(input_path: Path, output_dir: Path,
                  slugs: GrandChallengeSlugs = GrandChallengeSlugs()) -> LayoutPlan:
    """Find the layout of ``input_path`` and list its jobs; raises LayoutError if none fits."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise LayoutError(f"{input_path}: input does not exist")
    if input_path.is_file():
        return _plain_plan([input_path], output_dir)
    if not any(input_path.iterdir()):
        raise LayoutError(f"{input_path}: input folder is empty")
    if (input_path / "inputs.json").is_file():
        return _grand_challenge_plan(input_path, output_dir, slugs)
    care_cases = _care_case_dirs(input_path)
    if care_cases:
        return _care_plan(input_path, care_cases, output_dir)
    volumes = sorted(p for p in input_path.iterdir() if is_volume_file(p))
    if volumes:
        return _plain_plan(volumes, output_dir)
    raise LayoutError(
        f"{input_path}: unknown input layout: expected CARE (<Vendor>/<case>/GED4.nii.gz), "
        "Grand Challenge (inputs.json + images/<slug>/*.mha) or volume files "
        f"({', '.join(_OUTPUT_SUFFIX)})")


def _care_case_dirs(root: Path) -> list[Path]:
    """Case folders two levels down that hold at least one file named like a CARE sequence."""
    cases = []
    for vendor_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for case_dir in sorted(p for p in vendor_dir.iterdir() if p.is_dir()):
            if any(volume_stem(f) in CARE_SEQUENCES for f in case_dir.iterdir()
                   if volume_suffix(f)):
                cases.append(case_dir)
    return cases


def _care_plan(root: Path, case_dirs: list[Path], output_dir: Path) -> LayoutPlan:
    vendors = read_info_csv(root / "info.csv")
    plan = LayoutPlan(name="care", jobs=[])
    for case_dir in case_dirs:
        case = case_dir.name
        files = case_volumes(case_dir)
        if GED4 not in files:
            plan.problems.append(InputError(case_dir, "case has no GED4 volume (GED4.nii.gz)"))
        for sequence in CARE_SEQUENCES:
            if sequence in files:
                plan.jobs.append(Job(
                    case=case, sequence=sequence, input_path=files[sequence],
                    output_path=output_dir / "LiSeg_pred" / case / f"{sequence}_pred.nii.gz",
                    vendor=vendors.get(case, case_dir.parent.name)))
    return plan


def case_volumes(case_dir: Path) -> dict[str, Path]:
    """A CARE case folder's volume files by name without suffix (``GED4``, ``mask_GED4``, ...)."""
    return {volume_stem(f): f for f in sorted(case_dir.iterdir())
            if f.is_file() and volume_suffix(f) and not f.name.startswith(".")}


def read_info_csv(path: Path) -> dict[str, str]:
    """Case -> vendor from CARE's optional info.csv; a broken file is only a warning."""
    if not path.is_file():
        return {}
    try:
        with path.open(newline="") as handle:
            return {row["Case"].strip(): row["Vendor"].strip() for row in csv.DictReader(handle)
                    if row.get("Case") and row.get("Vendor")}
    except (KeyError, csv.Error, UnicodeDecodeError) as exc:
        log.warning("%s: ignored (cannot read Case/Vendor columns: %s)", path, exc)
        return {}


def _grand_challenge_plan(root: Path, output_dir: Path, slugs: GrandChallengeSlugs) -> LayoutPlan:
    inputs_json = root / "inputs.json"
    image_slugs = _grand_challenge_image_slugs(inputs_json)
    if slugs.input_slug is not None:
        slug = slugs.input_slug
    elif len(image_slugs) == 1:
        slug = image_slugs[0]
    else:
        raise LayoutError(
            f"{inputs_json}: {len(image_slugs)} image sockets ({', '.join(image_slugs) or 'none'}); "
            "choose one with --gc-input-slug")
    image_dir = root / "images" / slug
    files = sorted(p for p in image_dir.glob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise LayoutError(f"{image_dir}: no image file for socket '{slug}'")
    plan = LayoutPlan(name="grand-challenge", jobs=[])
    for path in files:
        name = volume_stem(path)
        plan.jobs.append(Job(case=name, sequence=None, input_path=path,
                             output_path=output_dir / "images" / slugs.output_slug / f"{name}.mha"))
    return plan


def _grand_challenge_image_slugs(inputs_json: Path) -> list[str]:
    """Slugs of image sockets listed in inputs.json (falls back to the images/ folders)."""
    try:
        sockets = json.loads(inputs_json.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"{inputs_json}: not valid JSON ({exc})") from None
    if not isinstance(sockets, list):
        raise LayoutError(f"{inputs_json}: expected a list of socket values")
    slugs = []
    for socket in sockets:
        interface = socket.get("interface", {}) if isinstance(socket, dict) else {}
        relative = str(interface.get("relative_path", ""))
        if interface.get("kind", "").lower() in ("image", "segmentation") or relative.startswith("images/"):
            slugs.append(relative.removeprefix("images/") or interface.get("slug", ""))
    if not slugs and (inputs_json.parent / "images").is_dir():
        slugs = sorted(p.name for p in (inputs_json.parent / "images").iterdir() if p.is_dir())
    return [s for s in slugs if s]


def _plain_plan(files: list[Path], output_dir: Path) -> LayoutPlan:
    plan = LayoutPlan(name="plain", jobs=[])
    for path in files:
        suffix = volume_suffix(path)
        if suffix is None:
            plan.problems.append(InputError(
                path, f"not a supported volume file (expected {', '.join(_OUTPUT_SUFFIX)})"))
            continue
        name = volume_stem(path)
        plan.jobs.append(Job(case=name, sequence=None, input_path=path,
                             output_path=output_dir / f"{name}_pred{_OUTPUT_SUFFIX[suffix]}"))
    return plan
