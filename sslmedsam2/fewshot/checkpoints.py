"""Local SAM2 / MedSAM2 checkpoints under ``<weights>/sam2/`` (or given as a file): found,
verified once by content before any case, never downloaded.

A file is accepted for what it holds, not for its name (``fewshot.identity``): an official file
by its sha256, any other (a user's ``medsam2.pt``, a fine-tune) by its tensors. sam2's own loader
raises an empty ``RuntimeError`` on a mismatched file and its ``*_hf`` builders download; here
every failure is a one-line ``WeightsError`` naming the file and the fix, and a randomly
initialised model (for tests and benchmarks of mechanics only) needs ``allow_random=True``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from sslmedsam2.errors import UsageError, WeightsError
from sslmedsam2.fewshot.checkpoint_file import check_archive, first_line, read_payload
from sslmedsam2.fewshot.identity import CheckpointIdentity, identify_checkpoint, weights_of
from sslmedsam2.fewshot.known_checkpoints import SPECS, CheckpointSpec

log = logging.getLogger(__name__)

SAM2_SUBDIR = "sam2"

#: Every model by name, in the order a folder's files are preferred (MedSAM2 first, the model
#: the paper used; then SAM 2.1, then SAM 2).
CHECKPOINTS: dict[str, CheckpointSpec] = {spec.name: spec for spec in SPECS}

#: Files of ``<weights>/sam2/`` that are documentation or configs, never checkpoints.
_NOT_CHECKPOINTS = (".md", ".txt", ".json", ".yaml", ".yml", ".sha256")
_DOC_NAMES = ("readme", "notice", "license")


class CheckpointNotFound(WeightsError):
    """No checkpoint file at all (as opposed to a file that is broken): engines step aside."""


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A spec and the file that holds it (None only for an allowed random model), with what the
    verification found (None for a random model)."""

    spec: CheckpointSpec
    path: Path | None
    identity: CheckpointIdentity | None = None

    def describe(self) -> str:
        if self.identity is not None:
            return self.identity.describe()
        return f"no file: RANDOM {self.spec.title} (mechanics only)"


def spec_named(name: str) -> CheckpointSpec:
    """The spec for a model name (``medsam2``, ``tiny`` ... ``sam2_large``); UsageError listing
    the names."""
    try:
        return CHECKPOINTS[name.lower()]
    except KeyError:
        raise UsageError(
            f"unknown SAM2 checkpoint name {name!r}; choose one of {', '.join(CHECKPOINTS)}"
        ) from None


def checkpoint_files(weights_dir: Path | str) -> list[Path]:
    """The candidate checkpoints of ``<weights_dir>/sam2/``: official names first (in
    ``CHECKPOINTS`` order), then every other file but documentation, hidden files and configs."""
    folder = Path(weights_dir) / SAM2_SUBDIR
    if not folder.is_dir():
        return []
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and _may_be_checkpoint(p)]
    order = {spec.filename.lower(): index for index, spec in enumerate(SPECS)}
    return sorted(files, key=lambda p: order.get(p.name.lower(), len(order)))


def _may_be_checkpoint(path: Path) -> bool:
    name = path.name.lower()
    return not (name.startswith(".") or name.startswith(_DOC_NAMES)
                or name.endswith(_NOT_CHECKPOINTS))


def verify_checkpoint(path: Path | str, name: str | None = None) -> ResolvedCheckpoint:
    """Identify ``path`` by its content (see ``fewshot.identity``) and log what it is, once."""
    identity = identify_checkpoint(path, name)
    log.info("SAM2 checkpoint %s", identity.describe())
    return ResolvedCheckpoint(identity.spec, identity.path, identity)


def resolve_checkpoint(
    weights_dir: Path | str | None = None,
    name: str | None = None,
    checkpoint: Path | str | None = None,
    allow_random: bool = False,
) -> ResolvedCheckpoint:
    """Find and verify the checkpoint to use.

    ``checkpoint`` (a file) wins; otherwise the first of ``checkpoint_files(weights_dir)``
    (with ``name``: the file of that official name if present). ``name`` also asserts the model
    the file must hold. No file raises CheckpointNotFound, unless ``allow_random`` (then the
    spec of ``name``, default tiny, with no file); a broken file raises WeightsError.
    """
    spec = spec_named(name) if name else None
    if checkpoint is not None:
        return verify_checkpoint(checkpoint, name)
    files = checkpoint_files(weights_dir) if weights_dir is not None else []
    if spec is not None:
        files = sorted(files, key=lambda p: p.name.lower() != spec.filename.lower())
    if files:
        return verify_checkpoint(files[0], name)
    if allow_random:
        spec = spec or CHECKPOINTS["tiny"]
        log.warning(
            "no SAM2 checkpoint; using a RANDOMLY INITIALISED %s model (mechanics only)", spec.name
        )
        return ResolvedCheckpoint(spec, None)
    folder = Path(weights_dir) / SAM2_SUBDIR if weights_dir is not None else Path(SAM2_SUBDIR)
    wanted = spec.filename if spec else "MedSAM2_latest.pt, sam2.1_hiera_*.pt or another SAM2 file"
    raise CheckpointNotFound(
        f"{folder}: no SAM2 checkpoint ({wanted}); copy the file there (it is never downloaded)"
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a SAM2 checkpoint file, or WeightsError saying why not."""
    path = Path(path)
    return weights_of(read_payload(check_archive(path)), path)


def build_predictor(
    resolved: ResolvedCheckpoint,
    device: str | torch.device = "cpu",
    hydra_overrides: list[str] | None = None,
) -> torch.nn.Module:
    """A SAM2 video predictor in eval mode with exact, extension-free outputs.

    The weights are loaded here (strictly) rather than by sam2, so a mismatch names the file.
    ``hydra_overrides`` are appended after the spec's (tests use a small ``image_size``).
    """
    from sam2.build_sam import build_sam2_video_predictor  # heavy import, only when needed

    spec = resolved.spec
    overrides = spec.hydra_overrides + list(hydra_overrides or [])
    predictor = build_sam2_video_predictor(
        spec.config, ckpt_path=None, device="cpu", hydra_overrides_extra=overrides
    )
    if resolved.path is not None:
        state = load_state_dict(resolved.path)
        _load_strict(predictor, state, resolved.path, spec)
    # the builder forces fill_hole_area=8 (and needs a CUDA extension for it); 0 = exact outputs
    predictor.fill_hole_area = 0
    return predictor.to(device).eval()


def _load_strict(
    predictor: torch.nn.Module, state: dict, path: Path, spec: CheckpointSpec
) -> None:
    """Load every tensor or raise WeightsError: a partly loaded model is a silent random one."""
    problem = ""
    try:
        result = predictor.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            missing, unexpected = len(result.missing_keys), len(result.unexpected_keys)
            problem = f"{missing} missing, {unexpected} unexpected tensors"
    except RuntimeError as error:  # shape mismatches: the first one is the useful line
        lines = [x.strip() for x in str(error).splitlines()[1:] if x.strip()]
        problem = first_line(lines[0] if lines else error)
    if problem:
        raise WeightsError(
            f"{path}: weights do not fit the {spec.name} model ({spec.config}: {problem}); "
            "pass the model name that matches the file"
        )
