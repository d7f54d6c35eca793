"""nnU-Net v2 ensemble engine: every trained fold found in the weights folder, one predictor each.

Weights layout: ``<weights>/nnunet/<SEQUENCE>/<Trainer>__<Plans>__<configuration>/fold_<k>/
checkpoint_final.pth`` beside that folder's ``dataset.json`` and ``plans.json`` (exactly what
nnU-Net writes under ``nnUNet_results``).

On a GPU the default is the paper's deployment: 3d_fullres, all folds, mirroring TTA. On a CPU a
5-fold TTA ensemble of the default network takes hours per CARE volume, so the default drops to
one fold (``all`` when present), no TTA, and a 2d model when one exists; the log says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sslmedsam2.container.budget import CasePlan, ensemble_text, fixed_seconds, plan_case
from sslmedsam2.engines.base import RuntimeOptions, Segmentation
from sslmedsam2.engines.slab_resampling import slabwise_configuration
from sslmedsam2.errors import WeightsError
from sslmedsam2.io import volume_array
from sslmedsam2.logs import FILE_ONLY
from sslmedsam2.nnunet_trainers import trainer_search_path
from sslmedsam2.postprocess import binary_entropy
from sslmedsam2.runtime import available_cpus, quiet_stdout, resolve_device, scoped_environ

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint_final.pth"
_GPU_PREFERENCE = ("3d_fullres", "2d", "3d_lowres")
_CPU_PREFERENCE = ("2d", "3d_fullres", "3d_lowres")


@dataclass(frozen=True)
class ModelFolder:
    """A trained nnU-Net model folder and the folds it holds."""

    path: Path
    configuration: str
    folds: tuple[str, ...]


@dataclass(frozen=True)
class ModelChoice:
    """Which model, folds and TTA the engine runs, and why (for the log)."""

    model: ModelFolder
    folds: tuple[str, ...]
    tta: bool
    reason: str

    def describe(self) -> str:
        return f"{self.model.configuration} {ensemble_text(self.folds, self.tta)}"


def sequence_dir(weights_dir: Path, sequence: str) -> Path:
    return Path(weights_dir) / "nnunet" / sequence


def discover_models(weights_dir: Path, sequence: str) -> list[ModelFolder]:
    """Model folders for ``sequence`` that hold at least one finished fold."""
    root = sequence_dir(weights_dir, sequence)
    if not root.is_dir():
        return []
    found = (model_folder(p) for p in sorted(root.iterdir()) if p.is_dir())
    return [m for m in found if m.folds and m.configuration]


def model_folder(folder: Path) -> ModelFolder:
    """``<Trainer>__<Plans>__<configuration>`` and its finished folds (empty when not a model)."""
    parts = Path(folder).name.split("__")
    folds = tuple(sorted(f.name.removeprefix("fold_") for f in Path(folder).glob("fold_*")
                         if (f / CHECKPOINT).is_file()))
    return ModelFolder(path=Path(folder), configuration=parts[2] if len(parts) == 3 else "",
                       folds=folds)


def choose_model(models: list[ModelFolder], options: RuntimeOptions, on_gpu: bool) -> ModelChoice:
    """Pick configuration, folds and TTA: explicit options win, else what suits the device."""
    by_config = {m.configuration: m for m in models}
    if options.configuration:
        if options.configuration not in by_config:
            raise WeightsError(
                f"no '{options.configuration}' model in {models[0].path.parent} "
                f"(found: {', '.join(by_config)})")
        model = by_config[options.configuration]
    else:
        preference = _GPU_PREFERENCE if on_gpu else _CPU_PREFERENCE
        model = next((by_config[c] for c in preference if c in by_config), models[0])
    reasons = []
    if options.folds:
        missing = [f for f in options.folds if f not in model.folds]
        if missing:
            raise WeightsError(f"{model.path}: no fold(s) {', '.join(missing)} "
                               f"(found: {', '.join(model.folds)})")
        folds = options.folds
    elif on_gpu or len(model.folds) == 1:
        folds = model.folds
    else:
        folds = ("all",) if "all" in model.folds else model.folds[:1]
        reasons.append(f"CPU: 1 of {len(model.folds)} folds (--folds to ensemble more)")
    tta = options.tta if options.tta is not None else on_gpu
    if options.tta is None and not on_gpu:
        reasons.append("CPU: mirroring TTA off (8x cost; --tta turns it on)")
    if not options.configuration and not on_gpu and len(by_config) > 1:
        reasons.append(f"CPU: prefers {model.configuration} of {', '.join(by_config)}")
    return ModelChoice(model=model, folds=folds, tta=tta, reason="; ".join(reasons))


class NnUNetEngine:
    """One nnUNetPredictor per sequence, created on first use and reused for every case.

    ``models`` pins a model folder per sequence (the training loop predicts with each round's
    model in place); otherwise models are found in ``weights_dir``. ``with_uncertainty`` also
    returns the ensemble's liver probability and its binary entropy (pseudo-label rounds, and
    averaging with another engine).
    """

    name = "nnunet"

    def __init__(self, weights_dir: Path, options: RuntimeOptions,
                 models: dict[str, Path] | None = None, with_uncertainty: bool = False,
                 announce: bool = True) -> None:
        self.weights_dir = Path(weights_dir)
        #: off: the "loaded" line goes to run logs only (the training loop loads a model per step)
        self.announce = announce
        self.options = options
        self.models = dict(models or {})
        self.with_uncertainty = with_uncertainty
        self._loaded: dict[str, tuple[object, ModelChoice]] = {}
        self._patch_seconds: dict[str, float] = {}
        self._voxel_seconds: dict[str, float] = {}
        self._device = None

    def _models(self, sequence: str) -> list[ModelFolder]:
        if sequence in self.models:
            return [model_folder(self.models[sequence])]
        return discover_models(self.weights_dir, sequence)

    def can_segment(self, sequence: str) -> bool:
        return bool(self._models(sequence))

    def missing(self, sequence: str) -> str:
        return (f"an nnU-Net model for {sequence} at {sequence_dir(self.weights_dir, sequence)}/"
                f"<Trainer>__<Plans>__<configuration>/fold_<k>/{CHECKPOINT} "
                "(with dataset.json and plans.json beside the fold folders)")

    def load(self, sequence: str) -> None:
        self._predictor(sequence)

    def over_budget(self, image: sitk.Image, sequence: str, vendor: str | None = None) -> str | None:
        """Never: the ensemble shrinks to fit (see ``sslmedsam2.container.budget``)."""
        return None

    def segment(self, image: sitk.Image, sequence: str, vendor: str | None = None) -> Segmentation:
        predictor, choice = self._predictor(sequence)
        spacing_zyx = list(image.GetSpacing())[::-1]
        properties = {"spacing": spacing_zyx}
        patches = sliding_window_patches(predictor, image.GetSize()[::-1], spacing_zyx)
        seconds = self._patch_seconds.get(sequence)
        voxels = int(np.prod(image.GetSize()))
        plan = plan_case(choice.folds, choice.tta, patches, seconds or 0.0, mirror_count(predictor),
                         self.options.time_budget if seconds is not None else None,
                         fixed_s=fixed_seconds(voxels, available_cpus(),
                                               self._voxel_seconds.get(sequence)))
        if plan.degraded:
            log.warning("nnunet %s: %s", sequence, "; ".join(plan.degraded))
        uncertainty = probability = None
        with following(predictor, plan, choice):
            if self.with_uncertainty:
                seg, probabilities = predictor.predict_single_npy_array(
                    volume_array(image)[None], properties, save_or_return_probabilities=True)
                probability = np.asarray(probabilities[1], dtype=np.float32)
                uncertainty = binary_entropy(probability)
            else:
                seg = predictor.predict_single_npy_array(volume_array(image)[None], properties)
        detail = f"{choice.model.configuration} {plan.describe()} patches={patches}"
        if seconds is not None:
            detail += f" est={plan.estimate_s:.0f}s"
        if plan.degraded:
            detail += " [time budget: " + "; ".join(plan.degraded[1:]) + "]"
        # nnU-Net's predictor autocasts to fp16 on any GPU (the T4 included), fp32 on CPU
        return Segmentation(mask=(np.asarray(seg) == 1).astype(np.uint8), uncertainty=uncertainty,
                            probability=probability, detail=detail, device=str(self._device),
                            precision="fp16" if self._device.type == "cuda" else "fp32")

    def _predictor(self, sequence: str):
        if sequence not in self._loaded:
            self._loaded[sequence] = self._load(sequence)
        return self._loaded[sequence]

    def _load(self, sequence: str):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        models = self._models(sequence)
        if not models:
            raise WeightsError(f"missing weights: expected {self.missing(sequence)}")
        if self._device is None:
            self._device = resolve_device(self.options.device)
        on_gpu = self._device.type == "cuda"
        choice = choose_model(models, self.options, on_gpu)
        started = time.perf_counter()
        try:
            # quiet: the predictor prints a notice whenever it is not on CUDA; the search path
            # lets it find trainers shipped with sslmedsam2 (the CPU schedule)
            search_path = trainer_search_path(os.environ.get("nnUNet_extTrainer"))
            with quiet_stdout(), scoped_environ(nnUNet_extTrainer=search_path):
                predictor = nnUNetPredictor(use_mirroring=choice.tta, perform_everything_on_device=on_gpu,
                                            device=self._device, verbose=False, allow_tqdm=False)
                predictor.initialize_from_trained_model_folder(
                    str(choice.model.path), use_folds=tuple(_fold_arg(f) for f in choice.folds),
                    checkpoint_name=CHECKPOINT)
            # same voxels, bounded memory on large volumes (issue 6: 735 x 512 x 512 in 16 GB)
            predictor.configuration_manager = slabwise_configuration(predictor.configuration_manager)
        except Exception as exc:  # torch/pickle/json errors all mean the same to the user
            raise WeightsError(
                f"{choice.model.path}: cannot load nnU-Net model "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else 'no detail'}); "
                "re-export the model folder or point --weights elsewhere") from None
        log.info("nnunet %s: loaded %s (%s) on %s in %.1f s%s", sequence, choice.model.path.name,
                 choice.describe(), self._device, time.perf_counter() - started,
                 f" [{choice.reason}]" if choice.reason else "",
                 extra=None if self.announce else FILE_ONLY)
        if self.options.time_budget is not None:
            try:
                self._patch_seconds[sequence] = seconds_per_patch(predictor, self._device)
            except Exception as exc:  # the estimate must never cost a case its mask
                log.warning("nnunet %s: could not time a patch (%s: %s); the time budget is not "
                            "applied", sequence, type(exc).__name__, str(exc)[:200])
            else:
                log.info("nnunet %s: %.3f s per patch on %s; per-case budget %.0f s", sequence,
                         self._patch_seconds[sequence], self._device, self.options.time_budget)
            try:
                self._voxel_seconds[sequence] = seconds_per_voxel(predictor)
            except Exception as exc:  # the reference constant stands in
                log.warning("nnunet %s: could not time preprocessing (%s: %s); using the reference "
                            "cost per voxel", sequence, type(exc).__name__, str(exc)[:200])
            else:
                log.info("nnunet %s: resampling and export %.2f s per million input voxels",
                         sequence, self._voxel_seconds[sequence] * 1e6)
        return predictor, choice


def mirror_count(predictor) -> int:
    """Network passes per patch with mirroring TTA (every subset of the mirrored axes)."""
    return 2 ** len(predictor.allowed_mirroring_axes or ())


def seconds_per_patch(predictor, device) -> float:
    """One sliding-window patch through nnU-Net's own prediction code on ``device`` (its
    autocast and dtypes), after a warm-up pass, without mirroring."""
    import torch

    patch = tuple(predictor.configuration_manager.patch_size)
    channels = len(predictor.dataset_json["channel_names"])
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    mirroring, predictor.use_mirroring = predictor.use_mirroring, False
    try:
        batch = torch.zeros((channels, *patch))
        predictor.predict_sliding_window_return_logits(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        predictor.predict_sliding_window_return_logits(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started
    finally:
        predictor.use_mirroring = mirroring


def seconds_per_voxel(predictor, shape_zyx: tuple[int, int, int] = (24, 160, 160)) -> float:
    """Per input voxel, what a case costs around the network on this machine whatever the
    ensemble: nnU-Net's own preprocessing (resampling, normalisation) and export (resampling the
    probabilities back) of a random volume somewhat finer than the model's spacing, as CARE
    volumes are."""
    import torch
    from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape,
    )

    target = [float(s) for s in predictor.configuration_manager.spacing]
    spacing = [target[0] if len(target) == 3 else 3.0, *(s * 0.8 for s in target[-2:])]
    channels = len(predictor.dataset_json["channel_names"])
    image = np.random.default_rng(0).random((channels, *shape_zyx), dtype=np.float32)
    started = time.perf_counter()
    with quiet_stdout():
        item = next(PreprocessAdapterFromNpy(
            [image], [None], [{"spacing": spacing}], [None], predictor.plans_manager,
            predictor.dataset_json, predictor.configuration_manager, num_threads_in_multithreaded=1,
            verbose=False))
        heads = predictor.label_manager.num_segmentation_heads
        logits = torch.zeros((heads, *item["data"].shape[1:]))
        convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, predictor.plans_manager, predictor.configuration_manager,
            predictor.label_manager, item["data_properties"], return_probabilities=True)
    return (time.perf_counter() - started) / int(np.prod(shape_zyx))


@contextlib.contextmanager
def following(predictor, plan: CasePlan, choice: ModelChoice) -> Iterator[None]:
    """The loaded predictor running ``plan``'s folds and TTA for one case."""
    every_fold, mirroring = predictor.list_of_parameters, predictor.use_mirroring
    predictor.list_of_parameters = [every_fold[choice.folds.index(f)] for f in plan.folds]
    predictor.use_mirroring = plan.tta
    try:
        yield
    finally:
        predictor.list_of_parameters, predictor.use_mirroring = every_fold, mirroring


def _fold_arg(fold: str) -> int | str:
    return fold if fold == "all" else int(fold)


def sliding_window_patches(predictor, shape_zyx: tuple[int, ...], spacing_zyx: list[float]) -> int:
    """Sliding-window patches per fold and mirror for a volume (after nnU-Net's resampling)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    manager = predictor.configuration_manager
    target = list(manager.spacing)
    patch = list(manager.patch_size)
    if len(target) == len(shape_zyx):
        shape = [int(s) for s in compute_new_shape(shape_zyx, spacing_zyx, target)]
    else:  # 2d: in-plane resampling only
        shape = [shape_zyx[0], *(int(s) for s in compute_new_shape(shape_zyx[1:], spacing_zyx[1:], target))]
    planes = shape[-len(patch):]
    padded = [max(s, p) for s, p in zip(planes, patch)]
    steps = compute_steps_for_sliding_window(padded, patch, predictor.tile_step_size)
    count = int(np.prod([len(s) for s in steps]))
    return count * (shape[0] if len(patch) < len(shape) else 1)
