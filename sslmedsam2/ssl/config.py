"""The semi-supervised run's configuration: a TOML file, every choice explicit, defaults documented.

``sslmedsam2 train --print-config`` writes the annotated template (``TEMPLATE``); a run folder keeps
both the file it was started with and the resolved configuration (``config.json``), so a rerun
with a different file is refused instead of silently mixing two experiments.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

from sslmedsam2.datasets import LAYOUTS
from sslmedsam2.errors import UsageError
from sslmedsam2.registration.label_propagation import METHODS as ATLAS_METHODS
from sslmedsam2.registration.syn import STARTS as SYN_STARTS
from sslmedsam2.sequences import CARE_SEQUENCES, GED4, valid_sequence_name
from sslmedsam2.training.supervised import PROFILES, TrainingProfile

ENGINES = ("atlas", "sam2", "none")
#: how ``fuse_labelled_only`` joins the few-shot engine and the labelled-only nnU-Net in round 0
FUSIONS = ("agreement", "average", "average-atlas")


@dataclass(frozen=True)
class DataConfig:
    """Where the cases are. ``train``: a collection in any layout of
    :mod:`sslmedsam2.datasets` (``layout = "auto"`` tells them apart by name): a CARE root
    (``Vendor_X/<case>/<SEQ>.nii.gz``, masks ``mask_<SEQ>``), nnU-Net raw (imagesTr/labelsTr),
    images/ + masks/, or one folder of ``<case>_image`` + ``<case>_liver`` files. Cases with a mask
    are the labelled ones. ``sequences``: CARE sequence names, or for any other layout the one name
    the collection's sequence gets (models and reports are named after it). ``labelled_sequence``:
    CARE's sequence whose masks are the supports of every sequence. ``holdout_images`` /
    ``holdout_labels``: an optional labelled split scored after every round and never trained on
    (a non-CARE holdout collection carries its own masks: ``holdout_labels`` is then optional)."""

    train: Path
    sequences: tuple[str, ...] = (GED4,)
    layout: str = "auto"
    labelled_sequence: str = GED4
    holdout_images: Path | None = None
    holdout_labels: Path | None = None


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Round 0 and the filtering of every round's pseudo labels before training.

    ``engine``: atlas (weight-free registration), sam2 (TFFS-MedSAM2, needs ``checkpoint``) or none
    (train on the labelled cases only: the supervised baseline). ``atlas_method``: syn (ANTs'
    deformable registration, what holds across real patients), affine (SimpleITK, fast, what
    holds across sequences) or auto (syn within the labelled sequence, affine across).
    ``atlas_syn_start``: the linear map SyN starts from, similarity (one scale for all axes) or
    affine (ANTs' own; what the recorded CHAOS SSL figures used). ``atlas_head_foot_search_mm``:
    from the similarity map, how far up or down the support's liver may be slid to where the
    query looks like one even organ inside it (``registration.head_foot_search``; 0: off).
    ``atlas_weighting``: within the labelled sequence, each support's vote is weighted voxel by
    voxel by how its warped image matches the query (``registration.local_weighting``; False:
    every support counts the same). ``atlas_intensity``: the atlas's vote is corrected by each
    query's own intensities
    (``registration.intensity_refinement``; False: the vote alone). ``same_vendor_supports``: a query
    is labelled from the supports of its own vendor when there are any (the paper); False uses
    every support (better fusion when each vendor has only one or two). ``ignore_uncertainty_above``:
    voxels whose binary entropy (bits, 0..1) exceeds it become nnU-Net's ``ignore`` label (None:
    off). ``fuse_labelled_only``: round 0 also trains nnU-Net on the labelled cases alone (the
    intermediate schedule) and fuses it with the few-shot engine (no effect with engine "none",
    which has no round 0). ``fusion = "average-atlas"`` (the default) keeps where their mean
    probability reaches one half and the few-shot engine's organ alone where the two organs part
    ways (``engines.average``, the engine an SSL run serves, with the roles swapped). On real
    patients with one label the served model scored 0.894 on the mean of three folds at 1440
    iterations against 0.845 with the atlas alone in round 0, and 0.838 against 0.829 on a fourth
    fold at 720 iterations that chose nothing: never below it in a fold (benchmarks/RESULTS.md,
    SSL attempts 21-22). Its pseudo labels beat the atlas's where the partner generalised (0.851 /
    0.862 / 0.872 against 0.835 / 0.843 / 0.852) and trailed them where it did not (0.844 against
    0.860, the partner at 0.51 held out). ``fusion = "average"`` keeps the nnU-Net's organ
    there instead (the few-shot engine's where the two are different objects, as the served
    engine), which failed outright where a model trained on one patient meets the dark
    liver (attempt 13: -0.076). ``fusion = "agreement"`` keeps only where both say liver; where
    they differ the uncertainty is 1 bit, so with ``ignore_uncertainty_above`` set those voxels
    are not trained on (``engines.agreement``). False: round 0 is the few-shot engine alone, as
    in the paper.
    Whole cases are dropped when their pseudo label is empty, smaller than ``min_volume_ml``, or
    has more than ``max_components`` connected components of at least 1 ml and a tenth of its
    volume each (None: no limit).
    ``largest_component``: a kept label keeps one component, the largest, or where a round's
    model made it, the one that model's own training label overlaps most (a bigger false object
    is not taught as the liver). ``labelled_share``: nnU-Net draws its training cases uniformly,
    so one manual mask among nine pseudo labels teaches a tenth of the time; above 0 the labelled
    cases are repeated in the training set until they make about this share of it (0: each
    once, as in the paper; with cross-validation folds a copy may sit in a fold's validation
    set, which only flatters nnU-Net's own validation figure). Default 0.5, the real masks drawn
    as often as all pseudo labels together: with one label on real patients, over six folds of
    two splits, the served average beats labelled-only by +0.035 Dice on the mean against +0.026
    with 0, and its worst fold is -0.002 against -0.027 (benchmarks/RESULTS.md, attempts 9 and
    10); with three labels one fold only, where it did not cost (+0.008). The paper's and the
    demo's configs set 0.
    """

    engine: str = "atlas"
    atlas_method: str = "auto"
    atlas_syn_start: str = "similarity"
    atlas_head_foot_search_mm: float = 150.0
    atlas_weighting: bool = True
    atlas_intensity: bool = True
    checkpoint: Path | None = None
    setting: str = "auto"
    max_supports: int | None = None
    same_vendor_supports: bool = True
    ignore_uncertainty_above: float | None = None
    fuse_labelled_only: bool = True
    fusion: str = "average-atlas"
    labelled_share: float = 0.5
    min_volume_ml: float = 50.0
    max_components: int | None = 3
    largest_component: bool = True


@dataclass(frozen=True)
class ScheduleConfig:
    """One nnU-Net training: a named profile (``training.PROFILES``) and optional overrides.

    ``folds``: "auto" (5-fold when there are >= 5 training cases, else "all") or a list.
    ``extra_configurations`` (``[final]`` only): more nnU-Net configurations trained on the final
    training set and exported beside the main one, e.g. ["2d"]: process.py prefers a 2d model on
    CPU, where 3d_fullres at full size costs hours per case.
    """

    profile: str = "cpu-quick"
    configuration: str | None = None
    folds: str | tuple[str, ...] = "auto"
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None
    trainer: str | None = None
    vram_target_gb: float | None = None
    width_divisor: int | None = None
    extra_configurations: tuple[str, ...] = ()

    def resolve(self, n_cases: int) -> TrainingProfile:
        """The concrete nnU-Net profile for a training set of ``n_cases`` cases."""
        base = PROFILES[self.profile]
        overrides = {name: getattr(self, name) for name in (
            "configuration", "epochs", "iterations_per_epoch", "val_iterations_per_epoch",
            "trainer", "vram_target_gb", "width_divisor") if getattr(self, name) is not None}
        if self.folds == "auto":
            folds = tuple(str(f) for f in range(5)) if n_cases >= 5 else ("all",)
        else:
            folds = tuple(str(f) for f in self.folds)
        return replace(base, folds=folds, **overrides)


@dataclass(frozen=True)
class LoopConfig:
    """When to stop, and the run's seed and device. A round's "change" is the mean Dice between
    its pseudo labels and the previous round's; the loop stops once it reaches
    ``convergence_dice`` or after ``max_rounds`` nnU-Net rounds.

    ``choose_export``: export the SSL model or a labelled-only one, whichever scores better on
    labelled cases left out of training (``choose_export_folds``-fold over the labelled cases,
    two trainings per fold; see :mod:`sslmedsam2.ssl.export_choice`).

    ``keep_best_round``: self-training can drift (a model that under-segments a little teaches
    the next round smaller labels, and so on). Every round's model also segments the labelled
    cases; when a round reproduces their masks worse than an earlier round by more than
    ``drift_tolerance`` (mean Dice), the loop stops and the final model comes from the best
    round instead of the last.

    ``warm_start``: each round's nnU-Net starts from the weights (and plans) of the model before
    it, the previous round's, or for round 1 the labelled-only partner of a fused round 0
    (``pseudo_labels.fuse_labelled_only``), instead of from scratch; off in the paper's setting.

    ``serve_average``: the exported weights ask ``process.py`` to average the exported nnU-Net
    with the atlas over the exported supports (``engines.average``; the manifest's ``engines``),
    for the supports' sequence. On real patients with one label this beat the model alone on
    Dice in four folds of six and on HD95 in five (``benchmarks/RESULTS.md``, attempt 8); it
    costs a registration per case. With a held-out split the run scores it too (the report's
    ``served`` row). Off: the model alone, as in the paper.

    ``deterministic_registration``: the run's ANTs registrations on one thread, so a rerun makes
    the same pseudo labels (with threads, one hard CHAOS pair scored 0.68 and 0.13 Dice an hour
    apart; see ``registration.syn.pin_registration_threads``). It applies to the whole process
    and only if ANTs has not been loaded in it before (the log warns).
    """

    max_rounds: int = 3
    convergence_dice: float = 0.98
    choose_export: bool = True
    choose_export_folds: int = 2
    keep_best_round: bool = True
    drift_tolerance: float = 0.005
    warm_start: bool = False
    serve_average: bool = True
    deterministic_registration: bool = True
    seed: int = 0
    device: str = "auto"
    dataset_id: int = 600
    montage_cases: int = 2


@dataclass(frozen=True)
class SSLConfig:
    """Everything a run needs. ``intermediate`` trains rounds 1..N; ``final`` trains the deployed
    model on the last pseudo labels (skipped, reusing the last round's model, when identical)."""

    data: DataConfig
    pseudo_labels: PseudoLabelConfig = PseudoLabelConfig()
    intermediate: ScheduleConfig = ScheduleConfig()
    final: ScheduleConfig = ScheduleConfig()
    loop: LoopConfig = LoopConfig()
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_config(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, paths as strings, without the file it came from."""
        out = asdict(self)
        out.pop("source")
        return _jsonable(out)


def check_config(config: SSLConfig) -> None:
    """One clear message per bad value, before any work starts."""
    problems = []
    problems += _data_problems(config.data)
    labels = config.pseudo_labels
    if labels.engine not in ENGINES:
        problems.append(f"pseudo_labels.engine: {labels.engine!r} (choose from {', '.join(ENGINES)})")
    if labels.atlas_method not in ATLAS_METHODS:
        problems.append(f"pseudo_labels.atlas_method: {labels.atlas_method!r} (choose from "
                        f"{', '.join(ATLAS_METHODS)})")
    if labels.atlas_syn_start not in SYN_STARTS:
        problems.append(f"pseudo_labels.atlas_syn_start: {labels.atlas_syn_start!r} (choose from "
                        f"{', '.join(SYN_STARTS)})")
    if labels.atlas_head_foot_search_mm < 0:
        problems.append(f"pseudo_labels.atlas_head_foot_search_mm: {labels.atlas_head_foot_search_mm} "
                        "(0 or more; 0 switches the search off)")
    if labels.engine == "sam2" and labels.checkpoint is None:
        problems.append("pseudo_labels.engine = 'sam2' needs pseudo_labels.checkpoint")
    if labels.fusion not in FUSIONS:
        problems.append(f"pseudo_labels.fusion: {labels.fusion!r} (choose from {', '.join(FUSIONS)})")
    if labels.engine == "none" and len(config.data.sequences) > 1:
        problems.append("pseudo_labels.engine = 'none' trains on labels only: one sequence has labels")
    if labels.ignore_uncertainty_above is not None and not 0 < labels.ignore_uncertainty_above < 1:
        problems.append("pseudo_labels.ignore_uncertainty_above must lie in (0, 1) bits")
    if not 0 <= labels.labelled_share < 1:
        problems.append("pseudo_labels.labelled_share must lie in [0, 1)")
    for name in ("intermediate", "final"):
        if getattr(config, name).profile not in PROFILES:
            problems.append(f"{name}.profile: {getattr(config, name).profile!r} "
                            f"(choose from {', '.join(PROFILES)})")
    if config.intermediate.extra_configurations:
        problems.append("intermediate.extra_configurations: only the final model has companions")
    if config.loop.max_rounds < 0 or not 0 < config.loop.convergence_dice <= 1:
        problems.append("loop.max_rounds must be >= 0 and loop.convergence_dice in (0, 1]")
    if config.loop.choose_export_folds < 2:
        problems.append("loop.choose_export_folds must be >= 2")
    if not 0 <= config.loop.drift_tolerance < 1:
        problems.append("loop.drift_tolerance must lie in [0, 1)")
    if problems:
        where = f"{config.source}: " if config.source else ""
        raise UsageError(where + "; ".join(problems))


def _data_problems(data: DataConfig) -> list[str]:
    problems = []
    bad = [s for s in data.sequences if not valid_sequence_name(s)]
    if bad or not data.sequences:
        problems.append(f"data.sequences: {list(data.sequences)} (names of letters, digits, _.-)")
    if data.layout not in LAYOUTS:
        problems.append(f"data.layout: {data.layout!r} (choose from {', '.join(LAYOUTS)})")
    unknown = [s for s in data.sequences if s not in CARE_SEQUENCES]
    if data.layout == "care" and unknown:
        problems.append(f"data.sequences: {unknown} are not CARE sequences ({list(CARE_SEQUENCES)})")
    if data.layout not in ("care", "auto") and len(data.sequences) != 1:
        problems.append(f"data.sequences: a {data.layout} collection has one sequence: name it")
    if data.holdout_labels is not None and data.holdout_images is None:
        problems.append("data.holdout_labels needs data.holdout_images")
    return problems


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> SSLConfig:
    """Parse the TOML file; relative paths are relative to the file. ``overrides`` maps
    ``section.key`` to a value (from the command line), relative to the working directory."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the config ({exc})") from None
    base = path.resolve().parent
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    return build_config(raw, base, source=path)


_SECTIONS = {"data": DataConfig, "pseudo_labels": PseudoLabelConfig, "intermediate": ScheduleConfig,
             "final": ScheduleConfig, "loop": LoopConfig}
_PATHS = {("data", "train"), ("data", "holdout_images"), ("data", "holdout_labels"),
          ("pseudo_labels", "checkpoint")}
_TUPLES = {("data", "sequences"), ("intermediate", "folds"), ("final", "folds"),
           ("intermediate", "extra_configurations"), ("final", "extra_configurations")}


def build_config(raw: dict[str, Any], base: Path, source: Path | None = None) -> SSLConfig:
    """An ``SSLConfig`` from parsed TOML; unknown sections or keys are errors, not ignored."""
    where = f"{source}: " if source else ""
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise UsageError(f"{where}unknown section(s) {unknown} (known: {list(_SECTIONS)})")
    if "train" not in raw.get("data", {}):
        raise UsageError(f"{where}[data] train = '<CARE training folder>' is required")
    sections = {}
    for name, cls in _SECTIONS.items():
        values = dict(raw.get(name, {}))
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(values) - known)
        if extra:
            raise UsageError(f"{where}[{name}] unknown key(s) {extra} (known: {sorted(known)})")
        for key, value in list(values.items()):
            if (name, key) in _PATHS and value not in (None, ""):
                values[key] = (base / Path(value).expanduser()).resolve()
            elif (name, key) in _PATHS:
                values[key] = None
            elif (name, key) in _TUPLES and not isinstance(value, str):
                values[key] = tuple(str(v) for v in value)
            elif key in ("max_supports", "max_components", "ignore_uncertainty_above") and value in (0, ""):
                values[key] = None  # TOML has no null: 0 means "off"
        sections[name] = cls(**values)
    return SSLConfig(**sections, source=source)


def default_values() -> dict[str, dict[str, Any]]:
    """Every section's defaults in ``to_dict`` form (``data.train`` has none)."""
    out = {}
    for name, cls in _SECTIONS.items():
        fields = cls.__dataclass_fields__.values()
        out[name] = _jsonable({f.name: f.default for f in fields if f.default is not MISSING})
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


TEMPLATE = """\
# sslmedsam2 semi-supervised training (SSL-MedSAM2's FSL-nnUNet branch).
# Relative paths are relative to this file. 0 switches the optional limits off.

[data]
train = "data/train"              # CARE root (Vendor_X/<case>/GED4.nii.gz + mask_GED4.nii.gz), or any
                                  # collection: imagesTr/ + labelsTr/, images/ + masks/ (same names),
                                  # or <case>_image + <case>_liver files in one folder
layout = "auto"                   # auto | care | nnunet | folders | flat
sequences = ["GED4"]              # CARE: also e.g. "T1" (cross-sequence pseudo labels); any other
                                  # layout: the one name of your sequence, e.g. ["T2"]
labelled_sequence = "GED4"        # CARE: whose masks are the supports of every sequence
# holdout_images = "data/test/input"        # optional labelled split, scored every round
# holdout_labels = "data/ground_truth/test" # CARE: Vendor_X/<case>/mask_<SEQ>.nii.gz; other
                                            # layouts: the holdout collection's own masks

[pseudo_labels]
engine = "atlas"                  # atlas | sam2 | none (labelled-only baseline)
atlas_method = "auto"             # atlas: auto (syn within the labelled sequence, affine across)
                                  # | syn (ANTs deformable, real anatomy) | affine (fast)
atlas_syn_start = "similarity"    # syn: the linear map it starts from: similarity | affine
atlas_head_foot_search_mm = 150   # syn, similarity start: slide the support's liver up to this
                                  # far head-foot to where the query looks like one organ (0: off)
atlas_weighting = true            # atlas: weight each support by local likeness to the query
atlas_intensity = true            # atlas: correct the vote by the query's own intensities
# checkpoint = "weights/sam2/MedSAM2_latest.pt"   # engine = "sam2" only
setting = "auto"                  # sam2: auto | paper | cpu-practical
max_supports = 0                  # 0: no limit
same_vendor_supports = true       # the query's vendor's supports when it has any (the paper)
ignore_uncertainty_above = 0      # bits (0..1); voxels above become nnU-Net's ignore label
fuse_labelled_only = true         # round 0: the few-shot engine fused with an nnU-Net trained on
                                  # the labelled cases alone (false: the engine alone, the paper)
fusion = "average-atlas"          # with fuse_labelled_only: average-atlas (their mean probability,
                                  # the few-shot engine's organ alone where the two part ways) |
                                  # average (the nnU-Net's organ there) | agreement (where both
                                  # say liver; their disagreement: 1 bit)
labelled_share = 0.5              # labelled cases repeated to make about this share of a
                                  # training set with pseudo labels (0: each once, the paper)
min_volume_ml = 50.0              # drop cases whose pseudo label is smaller
max_components = 3                # drop cases with more components (>= 1 ml, >= 10%) than this
largest_component = true          # keep one component of kept pseudo labels: the largest, or in
                                  # rounds >= 2 the one the model's own training label overlaps most

[intermediate]                    # rounds 1..N
profile = "cpu-quick"             # cpu-quick | tiny-test | paper (see training.PROFILES)
folds = "auto"                    # auto: 5-fold with >= 5 cases, else ["all"]
# configuration = "3d_fullres"    # overrides: configuration, folds, epochs,
# epochs = 10                     # iterations_per_epoch, val_iterations_per_epoch,
# iterations_per_epoch = 10       # trainer, vram_target_gb, width_divisor

[final]                           # the deployed model, on the last round's pseudo labels
profile = "cpu-quick"
folds = "auto"
extra_configurations = []         # e.g. ["2d"]: also trained and exported (process.py's CPU choice)

[loop]
max_rounds = 3                    # nnU-Net rounds after round 0
convergence_dice = 0.98           # stop when successive pseudo labels agree this much (mean Dice)
choose_export = true              # export SSL or labelled-only, whichever scores better on labelled
choose_export_folds = 2           # cases left out of training (2 trainings per fold; needs >= 2 labels)
keep_best_round = true            # stop at drift: final model from the round that best fits the labelled masks
drift_tolerance = 0.005           # drift = labelled-mask Dice this far below an earlier round's
warm_start = false                # each round starts from the previous round's weights (round 1:
                                  # the fused round 0's labelled-only model), not from scratch
serve_average = true              # process.py averages the exported model with the atlas (supports'
                                  # sequence; a registration per case). false: the model alone
deterministic_registration = true # ANTs on one thread: a rerun makes the same pseudo labels
seed = 0
device = "auto"                   # auto | cpu | cuda
dataset_id = 600                  # nnU-Net dataset ids used: dataset_id + round
montage_cases = 2                 # overlay pictures, round by round
"""
