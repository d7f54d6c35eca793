"""A small synthetic CARE-LiSeg-like dataset grown from one real abdominal MRI.

Why: the real CARE data cannot ship with the package, yet the pipeline (few-shot pseudo labels,
iterative nnU-Net, the challenge container) needs a multi-vendor, multi-sequence, partly labelled
dataset with the CARE folder layout to be run end to end in minutes on a CPU. Every case is the
seed anatomy (``data/abdomen-mr``, Apache-2.0) under a random smooth deformation, re-contrasted as
a GED4-like (hepatobiliary phase) and a T1-like volume, each on its own vendor-specific grid (the
sequences are not registered, as in CARE), with a bias field and Rician noise. Ground truth is kept
for every case so pseudo labels and predictions can be scored.

Each case draws from ``numpy.random.default_rng((seed, case_index))``, so a case is reproducible on
its own, whatever the number of cases around it.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from io import StringIO
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from sslmedsam2.io import write_image_atomic, write_mask, write_text_atomic
from sslmedsam2.sequences import CARE_SEQUENCES

log = logging.getLogger(__name__)

#: The two sequences every synthetic case has; GED4 is the labelled one, as in CARE.
SEQUENCES: tuple[str, str] = ("GED4", "T1")
#: Marker present while a generation is running; lets a rerun recognise its own leftovers.
_INCOMPLETE_MARKER = ".example-incomplete"
_MANIFEST = "example.json"


@dataclass(frozen=True)
class SequenceGrid:
    """Nominal voxel grid of one sequence: in-plane and slice spacing (mm) and size (x, y, z)."""

    inplane_mm: float
    slice_mm: float
    size: tuple[int, int, int]


@dataclass(frozen=True)
class VendorProfile:
    """What makes a vendor look different: grids, axis flips and the scanner's intensity scale."""

    ged4: SequenceGrid
    t1: SequenceGrid
    intensity_scale: float
    #: Store x and y reversed (direction diag(-1, -1, 1)), as many NIfTI converters do.
    flip_xy: bool = False


#: Vendor grids, deliberately small (2-3.6 mm) so that a CPU nnU-Net trains in minutes. The
#: field of view (size x spacing) differs per vendor; T1 is coarser than GED4 everywhere. "C"
#: stands in for CARE's unseen test centre and is only used when asked for.
VENDOR_PROFILES: Mapping[str, VendorProfile] = MappingProxyType({
    "A": VendorProfile(SequenceGrid(2.2, 3.5, (150, 120, 18)), SequenceGrid(2.8, 4.0, (124, 100, 17)),
                       intensity_scale=1200.0),
    "B1": VendorProfile(SequenceGrid(2.6, 3.0, (136, 110, 20)), SequenceGrid(3.2, 3.5, (112, 92, 19)),
                        intensity_scale=450.0),
    "B2": VendorProfile(SequenceGrid(3.0, 2.5, (120, 100, 24)), SequenceGrid(3.6, 3.0, (100, 84, 22)),
                        intensity_scale=2500.0, flip_xy=True),
    "C": VendorProfile(SequenceGrid(2.0, 4.0, (168, 136, 16)), SequenceGrid(2.6, 5.0, (134, 108, 14)),
                       intensity_scale=800.0),
})


@dataclass(frozen=True)
class ExampleConfig:
    """What to generate. ``cases`` training cases and ``test_cases`` test cases, round-robin over
    ``vendors``; the first ``labelled_per_vendor`` training cases of each vendor get a GED4 mask."""

    out_dir: Path
    cases: int = 9
    test_cases: int = 3
    labelled_per_vendor: int = 2
    seed: int = 0
    vendors: tuple[str, ...] = ("A", "B1", "B2")
    #: Scales how much patients differ (deformation amplitude; affine scale, rotation and shift
    #: ranges). 1 is the default anatomy spread; larger values make a few labels cover less of
    #: it, which is what a semi-supervised benchmark needs to show anything.
    variability: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "vendors", tuple(self.vendors))
        for name in ("cases", "test_cases", "labelled_per_vendor", "seed"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy integers would break the JSON
        self._check_vendors()
        self._check_counts()

    def _check_vendors(self) -> None:
        if not self.vendors:
            raise ValueError("vendors must name at least one vendor")
        if len(set(self.vendors)) != len(self.vendors):
            raise ValueError(f"vendors must be unique, got {self.vendors}")
        unknown = [v for v in self.vendors if v not in VENDOR_PROFILES]
        if unknown:
            raise ValueError(f"unknown vendor(s) {unknown}; choose from {sorted(VENDOR_PROFILES)}")

    def _check_counts(self) -> None:
        n_vendors = len(self.vendors)
        if self.cases < n_vendors:
            raise ValueError(f"cases={self.cases} must be >= the number of vendors ({n_vendors}) "
                             "so that every vendor has a training case")
        if self.test_cases < 0:
            raise ValueError(f"test_cases={self.test_cases} must be >= 0")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")
        if not 0 < self.variability <= 4:
            raise ValueError(f"variability={self.variability} must lie in (0, 4]")
        if self.labelled_per_vendor < 1:
            raise ValueError(f"labelled_per_vendor={self.labelled_per_vendor} must be >= 1: "
                             "the few-shot branch needs at least one labelled support per vendor")
        smallest = self.cases // n_vendors
        if self.labelled_per_vendor > smallest:
            raise ValueError(
                f"labelled_per_vendor={self.labelled_per_vendor} exceeds the {smallest} training "
                f"case(s) of the smallest vendor (cases={self.cases} over {n_vendors} vendors); "
                f"raise cases to >= {self.labelled_per_vendor * n_vendors} or lower "
                "labelled_per_vendor")
        if self.cases + self.test_cases > 9999:
            raise ValueError("at most 9999 cases in all (case ids have four digits)")


@dataclass(frozen=True)
class ExampleCase:
    """One generated case and where its files are."""

    case_id: str
    vendor: str
    split: str  # "train" or "test"
    labelled: bool
    images: Mapping[str, Path]  # sequence -> image
    ground_truth: Mapping[str, Path]  # sequence -> mask (every case)
    train_mask: Path | None  # mask_GED4 beside a labelled training case, else None


@dataclass(frozen=True)
class ExampleDataset:
    """Paths of a generated dataset."""

    root: Path
    train_dir: Path
    test_input_dir: Path
    info_csv: Path
    ground_truth_dir: Path  # ground_truth/{train,test}/Vendor_X/<case>/mask_<SEQ>.nii.gz
    notice: Path
    manifest: Path
    cases: tuple[ExampleCase, ...] = field(default_factory=tuple)

    @property
    def test_ground_truth_dir(self) -> Path:
        return self.ground_truth_dir / "test"

    def split(self, split: str) -> tuple[ExampleCase, ...]:
        return tuple(c for c in self.cases if c.split == split)


# --------------------------------------------------------------------------------------------
# Seed anatomy


#: Organ groups of the TotalSegmentator total_mr labels that get their own contrast.
_ORGAN_LABELS: Mapping[str, tuple[int, ...]] = MappingProxyType({
    "liver": (5,), "spleen": (1,), "kidney": (2, 3), "vessel": (23, 24, 25), "gallbladder": (4,),
})


@dataclass(frozen=True)
class SeedAnatomy:
    """The seed as one vector image: normalised intensity then one soft map per organ group.

    Resampling the channels together with linear interpolation keeps image and labels consistent
    and costs one pass per grid.
    """

    channels: sitk.Image  # VectorFloat32: [intensity, *organ groups]
    organ_names: tuple[str, ...]
    organ_texture_mean: Mapping[str, float]  # mean normalised intensity inside each organ
    body_centre: tuple[float, float, float]  # physical point (mm)
    notice_text: str


def load_seed() -> SeedAnatomy:
    """Read the packaged seed MRI and organ labels into a :class:`SeedAnatomy`."""
    folder = resources.files("sslmedsam2") / "data" / "abdomen-mr"
    with resources.as_file(folder) as path:
        image = sitk.ReadImage(str(path / "image.nii.gz"), sitk.sitkFloat32)
        organs = sitk.GetArrayFromImage(sitk.ReadImage(str(path / "organs_totalseg_mr.nii.gz")))
        liver = sitk.GetArrayFromImage(sitk.ReadImage(str(path / "liver.nii.gz")))
        notice = (path / "NOTICE.md").read_text()
    voxels = sitk.GetArrayFromImage(image)
    low, high = np.percentile(voxels, [1.0, 99.5])
    norm = np.clip((voxels - low) / (high - low), 0.0, 1.0).astype(np.float32)
    maps = {name: np.isin(organs, labels).astype(np.float32) for name, labels in _ORGAN_LABELS.items()}
    maps["liver"] = (liver > 0).astype(np.float32)  # the dedicated liver file is the reference
    names = tuple(maps)
    means = {n: float(norm[maps[n] > 0].mean()) for n in names}
    body = np.argwhere(norm > 0.1)[:, ::-1].mean(axis=0)  # (x, y, z) index of the body centroid
    centre = image.TransformContinuousIndexToPhysicalPoint([float(c) for c in body])
    stack = _pad_seed(np.stack([norm, *(maps[n] for n in names)], axis=-1))
    channels = sitk.GetImageFromArray(stack, isVector=True)
    channels.SetSpacing(image.GetSpacing())
    channels.SetDirection(image.GetDirection())
    channels.SetOrigin(image.TransformIndexToPhysicalPoint([-_PAD_INPLANE, -_PAD_INPLANE, -_PAD_SLICES]))
    return SeedAnatomy(channels, names, MappingProxyType(means), tuple(centre), notice)


#: Seed padding (voxels): air around the body in-plane, repeated end slices through-plane.
_PAD_INPLANE = 20
_PAD_SLICES = 10


def _pad_seed(stack: np.ndarray) -> np.ndarray:
    """Pad the (z, y, x, channel) seed so generated fields of view may reach past it.

    The seed covers only 60 mm craniocaudally, so the end slices are repeated (the liver continues
    there). In-plane the seed is surrounded by air; its two outermost voxels are cleared first so
    stray signal at its border does not end up floating in the padding.
    """
    cleared = stack.copy()
    cleared[:, :2] = cleared[:, -2:] = cleared[:, :, :2] = cleared[:, :, -2:] = 0.0
    padded = np.pad(cleared, ((_PAD_SLICES, _PAD_SLICES), (0, 0), (0, 0), (0, 0)), mode="edge")
    return np.pad(padded, ((0, 0), (_PAD_INPLANE,) * 2, (_PAD_INPLANE,) * 2, (0, 0)), mode="constant")


# --------------------------------------------------------------------------------------------
# Geometry: random deformation and vendor grids


def _rotation(rng: np.random.Generator, variability: float = 1.0) -> np.ndarray:
    """Small rotation: a few degrees about z (axial plane), less about x and y."""
    ax, ay = np.deg2rad(rng.uniform(-2.0 * variability, 2.0 * variability, size=2))
    az = np.deg2rad(rng.uniform(-5.0 * variability, 5.0 * variability))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _bspline(rng: np.random.Generator, seed: SeedAnatomy, variability: float = 1.0) -> sitk.BSplineTransform:
    """Coarse-mesh B-spline with random control-point displacements (about 4 mm in-plane, 2 mm in z).

    Its domain is the padded seed box, so points just outside the seed (extrapolated slices)
    still deform smoothly instead of jumping to zero displacement at the border.
    """
    origin, extent = _padded_box(seed)
    domain = sitk.Image([8, 8, 8], sitk.sitkUInt8)
    domain.SetSpacing([e / 7 for e in extent])
    domain.SetOrigin(origin)
    transform = sitk.BSplineTransformInitializer(domain, [4, 4, 2], order=3)
    n_points = len(transform.GetParameters()) // 3
    sigma = (4.0 * variability, 4.0 * variability, 2.0 * variability)
    params = np.concatenate([rng.normal(0.0, s, n_points) for s in sigma])  # all x, all y, all z
    transform.SetParameters(params.tolist())
    return transform


def anatomy_transform(rng: np.random.Generator, seed: SeedAnatomy,
                      variability: float = 1.0) -> sitk.Transform:
    """Random patient: small affine (scale 0.9-1.1, rotation, shift) plus a smooth deformation.

    Maps points of the generated case to points of the seed (SimpleITK's resampling convention).
    """
    affine = sitk.AffineTransform(3)
    affine.SetCenter(seed.body_centre)
    spread = 0.1 * variability
    scale = rng.uniform(1 - spread, 1 + spread) * rng.uniform(0.97, 1.03, size=3)
    affine.SetMatrix((_rotation(rng, variability) @ np.diag(scale)).ravel().tolist())
    affine.SetTranslation(rng.uniform(-5.0 * variability, 5.0 * variability, size=3).tolist())
    # CompositeTransform applies its last transform first: B-spline, then affine.
    return _sampled(sitk.CompositeTransform([affine, _bspline(rng, seed, variability)]), seed)


def _sampled(transform: sitk.Transform, seed: SeedAnatomy, spacing_mm: float = 5.0) -> sitk.Transform:
    """The transform sampled as a 5 mm displacement field over the padded seed box.

    Why: resampling through a composite B-spline costs about 1 s per volume; a linearly
    interpolated dense field of a transform this smooth is indistinguishable and 5x faster.
    """
    origin, extent = _padded_box(seed)
    size = [int(math.ceil(e / spacing_mm)) + 1 for e in extent]
    field_image = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, size, origin, [spacing_mm] * 3, np.eye(3).ravel().tolist())
    return sitk.DisplacementFieldTransform(field_image)


def _padded_box(seed: SeedAnatomy) -> tuple[list[float], list[float]]:
    """Origin and extent (mm) of the (already padded) seed's box grown by 20 mm on every side:
    every generated grid lies inside it, so its deformation never stops at the seed's border."""
    ref = seed.channels
    pad = 20.0
    extent = [(n - 1) * s + 2 * pad for n, s in zip(ref.GetSize(), ref.GetSpacing())]
    return [o - pad for o in ref.GetOrigin()], extent


def with_motion(transform: sitk.Transform, shift_mm: np.ndarray) -> sitk.Transform:
    """The same patient after moving by ``shift_mm`` (another breath hold for another sequence)."""
    motion = sitk.TranslationTransform(3, [float(s) for s in shift_mm])
    return sitk.CompositeTransform([transform, motion])


def make_grid(grid: SequenceGrid, centre: np.ndarray, flip_xy: bool,
              rng: np.random.Generator) -> sitk.Image:
    """An empty image defining a grid around ``centre``: spacing jittered by +-3 %, size by a few
    voxels, identity direction or x/y reversed."""
    inplane = grid.inplane_mm * rng.uniform(0.97, 1.03)
    spacing = np.array([inplane, inplane, grid.slice_mm])
    size = [int(n + rng.integers(-4, 5)) for n in grid.size[:2]] + [int(grid.size[2] + rng.integers(-1, 2))]
    direction = np.diag([-1.0, -1.0, 1.0] if flip_xy else [1.0, 1.0, 1.0])
    half_extent = spacing * (np.array(size) - 1) / 2.0
    origin = np.asarray(centre) - direction @ half_extent
    image = sitk.Image(size, sitk.sitkUInt8)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    image.SetDirection(direction.ravel().tolist())
    return image


def resample_channels(seed: SeedAnatomy, grid: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """Seed channels on ``grid`` as (z, y, x, channel) float32. The seed is padded (see
    :func:`_pad_seed`); beyond even that, the nearest voxel is repeated rather than a black band."""
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(grid)
    resampler.SetTransform(transform)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkVectorFloat32)
    resampler.SetUseNearestNeighborExtrapolator(True)
    return sitk.GetArrayFromImage(resampler.Execute(seed.channels))


# --------------------------------------------------------------------------------------------
# Contrast, bias field and noise


@dataclass(frozen=True)
class Contrast:
    """Intensity model of one sequence: background f(n) = gain * n**gamma, organ levels."""

    background_gain: float
    background_gamma: float
    organ_levels: Mapping[str, float]
    texture_power: float = 0.35  # how much of the seed's texture survives inside organs


def ged4_contrast(rng: np.random.Generator) -> Contrast:
    """Hepatobiliary phase (fat-suppressed T1 after gadoxetate): the liver is the brightest organ,
    fat is suppressed, spleen and vessels are dark, kidneys intermediate."""
    return Contrast(
        background_gain=rng.uniform(0.38, 0.5), background_gamma=rng.uniform(0.55, 0.7),
        organ_levels=MappingProxyType({
            "liver": rng.uniform(0.8, 0.95), "spleen": rng.uniform(0.3, 0.42),
            "kidney": rng.uniform(0.45, 0.6), "vessel": rng.uniform(0.12, 0.2),
            "gallbladder": rng.uniform(0.08, 0.15)}))


def t1_contrast(rng: np.random.Generator) -> Contrast:
    """Pre-contrast T1 without fat suppression: fat brightest, liver only a little brighter than
    muscle and spleen, a steeper intensity curve (different gamma)."""
    return Contrast(
        background_gain=rng.uniform(0.8, 0.95), background_gamma=rng.uniform(0.75, 0.9),
        organ_levels=MappingProxyType({
            "liver": rng.uniform(0.26, 0.34), "spleen": rng.uniform(0.17, 0.22),
            "kidney": rng.uniform(0.18, 0.24), "vessel": rng.uniform(0.06, 0.1),
            "gallbladder": rng.uniform(0.05, 0.09)}))


def render(channels: np.ndarray, seed: SeedAnatomy, contrast: Contrast) -> np.ndarray:
    """Noise-free intensities: background tissue curve blended with textured organ levels."""
    norm = channels[..., 0]
    weights = channels[..., 1:]
    total = weights.sum(axis=-1, keepdims=True)
    weights = np.where(total > 1.0, weights / np.maximum(total, 1e-6), weights)  # soft maps overlap at edges
    out = contrast.background_gain * norm ** contrast.background_gamma * (1.0 - weights.sum(axis=-1))
    for i, name in enumerate(seed.organ_names):
        texture = (np.maximum(norm, 1e-3) / seed.organ_texture_mean[name]) ** contrast.texture_power
        out += weights[..., i] * contrast.organ_levels[name] * np.clip(texture, 0.5, 1.6)
    return out.astype(np.float32)


def bias_field(shape: tuple[int, ...], rng: np.random.Generator, strength: float = 0.15) -> np.ndarray:
    """Smooth multiplicative field exp(quadratic polynomial), roughly within +-``2*strength``."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    terms = [x, y, z, x * y, x * z, y * z, x * x, y * y, z * z]
    scale = np.array([1, 1, 0.5, 0.5, 0.3, 0.3, 0.5, 0.5, 0.2]) * strength  # weaker through-plane
    log_field = sum(c * t for c, t in zip(rng.normal(0.0, scale), terms))
    return np.exp(log_field).astype(np.float32)


def to_scanner_image(clean: np.ndarray, grid: sitk.Image, intensity_scale: float,
                     rng: np.random.Generator) -> sitk.Image:
    """Bias, Rician noise and the vendor's integer scale: non-negative int16 like scanner data."""
    biased = clean * bias_field(clean.shape, rng)
    sigma = rng.uniform(0.015, 0.035)
    real = biased + rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    magnitude = np.sqrt(real * real + imag * imag)  # Rician: magnitude of complex Gaussian signal
    scale = intensity_scale * rng.uniform(0.8, 1.25)
    voxels = np.clip(np.rint(magnitude * scale), 0, np.iinfo(np.int16).max).astype(np.int16)
    image = sitk.GetImageFromArray(voxels)
    image.CopyInformation(grid)
    return image


# --------------------------------------------------------------------------------------------
# One case


@dataclass(frozen=True)
class CasePlan:
    """Identity of a case before any voxel is made."""

    index: int  # 0-based over train then test; seeds the case's generator
    case_id: str
    vendor: str
    split: str
    labelled: bool


@dataclass(frozen=True)
class GeneratedSequence:
    image: sitk.Image
    mask: np.ndarray  # (z, y, x) uint8 0/1 on image's grid


def plan_cases(config: ExampleConfig) -> list[CasePlan]:
    """Case ids, vendors (round-robin), splits and the labelled subset, CARE-style ids."""
    plans: list[CasePlan] = []
    seen: dict[str, int] = {}
    for index in range(config.cases + config.test_cases):
        split = "train" if index < config.cases else "test"
        local = index if split == "train" else index - config.cases
        vendor = config.vendors[local % len(config.vendors)]
        labelled = False
        if split == "train":
            seen[vendor] = seen.get(vendor, 0) + 1
            labelled = seen[vendor] <= config.labelled_per_vendor
        plans.append(CasePlan(index, f"{index + 1:04d}-{vendor}", vendor, split, labelled))
    return plans


def generate_case(seed: SeedAnatomy, plan: CasePlan, base_seed: int,
                  variability: float = 1.0) -> dict[str, GeneratedSequence]:
    """GED4 and T1 of one case, each on its own grid, with its ground-truth mask."""
    rng = np.random.default_rng((base_seed, plan.index))
    profile = VENDOR_PROFILES[plan.vendor]
    transform = anatomy_transform(rng, seed, variability)
    centre = np.asarray(seed.body_centre) + rng.uniform([-10, -10, -3], [10, 10, 3])
    # T1 is another acquisition: a shifted field of view and a different breath hold.
    t1_centre = centre + rng.uniform([-15, -15, -4], [15, 15, 4])
    t1_transform = with_motion(transform, rng.uniform([-3, -3, -5], [3, 3, 5]))
    jobs = {"GED4": (profile.ged4, centre, transform, ged4_contrast(rng)),
            "T1": (profile.t1, t1_centre, t1_transform, t1_contrast(rng))}
    liver = seed.organ_names.index("liver") + 1  # channel 0 is the intensity
    out: dict[str, GeneratedSequence] = {}
    for sequence, (grid_spec, grid_centre, grid_transform, contrast) in jobs.items():
        grid = make_grid(grid_spec, grid_centre, profile.flip_xy, rng)
        channels = resample_channels(seed, grid, grid_transform)
        mask = (channels[..., liver] >= 0.5).astype(np.uint8)  # linear-interpolated label, cut at 1/2
        if mask.sum() < 100:
            raise RuntimeError(f"{plan.case_id} {sequence}: liver has only {int(mask.sum())} voxels")
        image = to_scanner_image(render(channels, seed, contrast), grid, profile.intensity_scale, rng)
        out[sequence] = GeneratedSequence(image, mask)
    return out


# --------------------------------------------------------------------------------------------
# Writing the dataset


def _prepare_out_dir(root: Path) -> None:
    """Refuse a non-empty folder that is not a previous example; clear a previous example so stale
    cases from a larger run cannot survive."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        ours = (root / _MANIFEST).is_file() or (root / _INCOMPLETE_MARKER).is_file()
        if not ours:
            raise FileExistsError(f"{root}: folder is not empty and holds no {_MANIFEST}; "
                                  "choose an empty or new folder")
        for name in ("train", "test", "ground_truth"):
            shutil.rmtree(root / name, ignore_errors=True)
        for name in ("NOTICE.md", _MANIFEST):
            (root / name).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / _INCOMPLETE_MARKER).write_text("generation in progress or interrupted\n")


def _case_dirs(root: Path, plan: CasePlan) -> tuple[Path, Path]:
    vendor_dir = f"Vendor_{plan.vendor}"
    split_dir = root / "train" if plan.split == "train" else root / "test" / "input"
    truth_dir = root / "ground_truth" / plan.split / vendor_dir / plan.case_id
    return split_dir / vendor_dir / plan.case_id, truth_dir


def write_case(root: Path, plan: CasePlan, sequences: Mapping[str, GeneratedSequence]) -> ExampleCase:
    image_dir, truth_dir = _case_dirs(root, plan)
    images, truth = {}, {}
    for name, seq in sequences.items():
        images[name] = write_image_atomic(seq.image, image_dir / f"{name}.nii.gz")
        truth[name] = write_mask(seq.mask, seq.image, truth_dir / f"mask_{name}.nii.gz")
    train_mask = None
    if plan.labelled:  # CARE labels GED4 only, for a few training cases
        train_mask = write_mask(sequences["GED4"].mask, sequences["GED4"].image,
                                image_dir / "mask_GED4.nii.gz")
    return ExampleCase(plan.case_id, plan.vendor, plan.split, plan.labelled,
                       MappingProxyType(images), MappingProxyType(truth), train_mask)


def _grid_record(image: sitk.Image, mask: np.ndarray) -> dict[str, Any]:
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    return {"size": list(image.GetSize()), "spacing": [round(s, 6) for s in image.GetSpacing()],
            "origin": [round(o, 6) for o in image.GetOrigin()], "direction": list(image.GetDirection()),
            "liver_ml": round(float(mask.sum()) * voxel_ml, 2)}


def _info_csv(cases: list[ExampleCase]) -> str:
    """CARE's info.csv: Case, Vendor, Missing Modality (the CARE sequences this case lacks)."""
    buffer = StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Case", "Vendor", "Missing Modality"])
    for case in cases:
        missing = [s for s in CARE_SEQUENCES if s not in case.images]
        writer.writerow([case.case_id, case.vendor, ";".join(missing)])
    return buffer.getvalue()


def _manifest(config: ExampleConfig, records: list[dict[str, Any]]) -> str:
    settings = asdict(config)
    settings["out_dir"] = str(config.out_dir)
    settings["vendors"] = list(config.vendors)
    return json.dumps({"generator": "sslmedsam2.datasets.example", "config": settings,
                       "source": "derived from sslmedsam2/data/abdomen-mr (Apache-2.0), see NOTICE.md",
                       "cases": records}, indent=2) + "\n"


def _notice(seed: SeedAnatomy) -> str:
    return ("# Synthetic CARE-like example data\n\n"
            "Every volume here is generated by `sslmedsam2.datasets.example` from the seed MRI and masks\n"
            "described below (deformed, re-contrasted, resampled, with noise). It is derived from\n"
            "Apache-2.0 files and carries their attribution.\n\n---\n\n" + seed.notice_text)


def make_example(config: ExampleConfig, progress: bool = True) -> ExampleDataset:
    """Generate the dataset described in the module docstring under ``config.out_dir``."""
    root = config.out_dir
    _prepare_out_dir(root)
    seed = load_seed()
    cases: list[ExampleCase] = []
    records: list[dict[str, Any]] = []
    plans = plan_cases(config)
    for plan in tqdm(plans, desc="example cases", unit="case", file=sys.stderr, disable=not progress):
        sequences = generate_case(seed, plan, config.seed, config.variability)
        cases.append(write_case(root, plan, sequences))
        records.append({"case": plan.case_id, "index": plan.index, "vendor": plan.vendor,
                        "split": plan.split, "labelled": plan.labelled,
                        "grids": {n: _grid_record(s.image, s.mask) for n, s in sequences.items()}})
    dataset = ExampleDataset(
        root=root, train_dir=root / "train", test_input_dir=root / "test" / "input",
        info_csv=root / "test" / "input" / "info.csv", ground_truth_dir=root / "ground_truth",
        notice=root / "NOTICE.md", manifest=root / _MANIFEST, cases=tuple(cases))
    write_text_atomic(_info_csv([c for c in cases if c.split == "test"]), dataset.info_csv)
    write_text_atomic(_notice(seed), dataset.notice)
    write_text_atomic(_manifest(config, records), dataset.manifest)  # last: marks completion
    (root / _INCOMPLETE_MARKER).unlink(missing_ok=True)
    log.debug("example dataset: %d training (%d labelled) and %d test cases in %s",
             config.cases, sum(c.labelled for c in cases), config.test_cases, root)
    return dataset
