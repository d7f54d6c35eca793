"""Local SAM2 / MedSAM2 checkpoints under ``<weights>/sam2/``: resolved, checked, never downloaded.

sam2's own loader raises an empty ``RuntimeError`` on a mismatched file and its ``*_hf`` builders
download; here every failure is a one-line ``WeightsError`` naming the file and the fix, and a
randomly initialised model (for tests and benchmarks of mechanics only) needs ``allow_random=True``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from sslmedsam2.errors import UsageError, WeightsError

log = logging.getLogger(__name__)

SAM2_SUBDIR = "sam2"


@dataclass(frozen=True)
class CheckpointSpec:
    """A known checkpoint: its file name, sam2 config name and the image size it was trained at."""

    name: str
    filename: str
    config: str
    image_size: int

    @property
    def hydra_overrides(self) -> list[str]:
        """Overrides for ``build_sam2_video_predictor``: only a non-default image size needs one."""
        return [] if self.image_size == 1024 else [f"++model.image_size={self.image_size}"]


# Preference order when a folder holds several: MedSAM2 first, the model the paper used.
CHECKPOINTS: dict[str, CheckpointSpec] = {
    spec.name: spec
    for spec in (
        CheckpointSpec("medsam2", "MedSAM2_latest.pt", "configs/sam2.1/sam2.1_hiera_t.yaml", 512),
        CheckpointSpec("tiny", "sam2.1_hiera_tiny.pt", "configs/sam2.1/sam2.1_hiera_t.yaml", 1024),
        CheckpointSpec(
            "small", "sam2.1_hiera_small.pt", "configs/sam2.1/sam2.1_hiera_s.yaml", 1024
        ),
        CheckpointSpec(
            "base_plus", "sam2.1_hiera_base_plus.pt", "configs/sam2.1/sam2.1_hiera_b+.yaml", 1024
        ),
        CheckpointSpec(
            "large", "sam2.1_hiera_large.pt", "configs/sam2.1/sam2.1_hiera_l.yaml", 1024
        ),
    )
}


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A spec and the file that holds it (None only for an allowed random model)."""

    spec: CheckpointSpec
    path: Path | None


def spec_named(name: str) -> CheckpointSpec:
    """The spec for a checkpoint name (``tiny`` ... ``medsam2``); UsageError listing the names."""
    try:
        return CHECKPOINTS[name.lower()]
    except KeyError:
        raise UsageError(
            f"unknown SAM2 checkpoint name {name!r}; choose one of {', '.join(CHECKPOINTS)}"
        ) from None


def spec_for_file(path: Path | str) -> CheckpointSpec:
    """Infer the spec from a checkpoint's file name (the official names and MedSAM2's)."""
    filename = Path(path).name
    for spec in CHECKPOINTS.values():
        if filename.lower() == spec.filename.lower():
            return spec
    known = ", ".join(spec.filename for spec in CHECKPOINTS.values())
    raise WeightsError(
        f"{path}: cannot tell which SAM2 model this is from its name; rename it to one of {known} "
        "or pass the model name"
    )


def resolve_checkpoint(
    weights_dir: Path | str | None = None,
    name: str | None = None,
    checkpoint: Path | str | None = None,
    allow_random: bool = False,
) -> ResolvedCheckpoint:
    """Find the checkpoint to use.

    ``checkpoint`` (a file) wins; otherwise ``name`` picks the file in ``<weights_dir>/sam2/``;
    otherwise the first known file found there (MedSAM2 first). Missing files raise WeightsError,
    unless ``allow_random`` (then the spec of ``name``, default tiny, with no file).
    """
    if checkpoint is not None:
        path = Path(checkpoint)
        spec = spec_named(name) if name else spec_for_file(path)
        return ResolvedCheckpoint(spec, _existing(path, spec))
    folder = Path(weights_dir) / SAM2_SUBDIR if weights_dir is not None else None
    specs = [spec_named(name)] if name else list(CHECKPOINTS.values())
    for spec in specs:
        if folder is not None and (folder / spec.filename).is_file():
            return ResolvedCheckpoint(spec, folder / spec.filename)
    if allow_random:
        spec = specs[0] if name else CHECKPOINTS["tiny"]
        log.warning(
            "no SAM2 checkpoint; using a RANDOMLY INITIALISED %s model (mechanics only)", spec.name
        )
        return ResolvedCheckpoint(spec, None)
    wanted = specs[0].filename if name else " or ".join(s.filename for s in specs)
    raise WeightsError(
        f"{folder}: no SAM2 checkpoint {wanted}; copy the file there (it is never downloaded)"
    )


def _existing(path: Path, spec: CheckpointSpec) -> Path:
    if not path.is_file():
        raise WeightsError(f"{path}: SAM2 checkpoint not found; copy {spec.filename} there")
    return path


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The ``model`` weights of a SAM2 checkpoint file, or WeightsError saying why not."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated/corrupt files
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise WeightsError(
            f"{path}: unreadable or corrupt SAM2 checkpoint ({reason}); copy the file again"
        ) from error
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise WeightsError(
            f"{path}: not a SAM2 checkpoint (no 'model' weights); copy the right file"
        )
    return payload["model"]


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
    except RuntimeError as error:  # shape mismatches
        problem = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
    if problem:
        raise WeightsError(
            f"{path}: weights do not fit the {spec.name} model ({spec.config}: {problem}); "
            "pass the model name that matches the file"
        )
