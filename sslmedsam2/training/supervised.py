"""Supervised nnU-Net v2 training on labelled CARE cases, exported into the weights layout.

Uses nnU-Net's own API end to end (fingerprint, plan, preprocess, nnUNetTrainer) inside a private
work folder; only the epoch/iteration counts and, for the CPU profile, the network width are
changed, through the trainer's attributes and the plans file (nnU-Net's configuration points).
Light profiles use the short-schedule trainer in ``sslmedsam2/nnunet_trainers`` (found by nnU-Net
through ``nnUNet_extTrainer``) and a small VRAM target at planning, which makes nnU-Net's planner
choose a small patch and a matching network. The semi-supervised loop (``sslmedsam2.ssl``) calls
:func:`fit_nnunet` once per round.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import SimpleITK as sitk

from sslmedsam2.errors import InputError, SSLMedSAM2Error
from sslmedsam2.executors import Executor, LocalExecutor
from sslmedsam2.io import read_volume, write_image_atomic
from sslmedsam2.logs import FILE_ONLY
from sslmedsam2.nnunet_trainers import trainer_search_path
from sslmedsam2.orientation import reorient
from sslmedsam2.runtime import (
    available_cpus,
    configure_threads,
    quiet_stdout,
    resolve_device,
    scoped_environ,
    seed_everything,
)
from sslmedsam2.sequences import GED4
from sslmedsam2.supports import Support, find_supports
from sslmedsam2.training.display import attach_epoch_bar, fold_output

log = logging.getLogger(__name__)

CPU_TRAINER = "nnUNetTrainerSSLCPU"
#: nnU-Net's ``ignore`` label value in our two-class datasets (it must be the highest label).
IGNORE_LABEL = 2


@dataclass(frozen=True)
class TrainingProfile:
    """How much nnU-Net to train: the paper's full schedule or a CPU-sized one."""

    name: str
    configuration: str
    folds: tuple[str, ...]
    epochs: int
    iterations_per_epoch: int
    val_iterations_per_epoch: int
    #: Divide nnU-Net's planned features per stage by this (1 = stock network).
    width_divisor: int = 1
    #: nnU-Net trainer class (stock, or one in ``sslmedsam2/nnunet_trainers``).
    trainer: str = "nnUNetTrainer"
    #: VRAM target handed to nnU-Net's planner; smaller means a smaller patch (None: its default).
    vram_target_gb: float | None = None
    description: str = ""

    @property
    def model_folder_name(self) -> str:
        return f"{self.trainer}__nnUNetPlans__{self.configuration}"


PROFILES: dict[str, TrainingProfile] = {
    "cpu-quick": TrainingProfile(
        name="cpu-quick", configuration="3d_fullres", folds=("all",), epochs=25,
        iterations_per_epoch=12, val_iterations_per_epoch=2, width_divisor=4, trainer=CPU_TRAINER,
        vram_target_gb=2.0,
        description="minutes on 2 CPU cores: 1 model on all cases, 300 iterations, 1/4 width, "
                    "small patch"),
    "tiny-test": TrainingProfile(
        name="tiny-test", configuration="3d_fullres", folds=("all",), epochs=2,
        iterations_per_epoch=3, val_iterations_per_epoch=1, width_divisor=8, trainer=CPU_TRAINER,
        vram_target_gb=1.0,
        description="seconds: checks the mechanics only, not a usable model"),
    "paper": TrainingProfile(
        name="paper", configuration="3d_fullres", folds=("0", "1", "2", "3", "4"), epochs=1000,
        iterations_per_epoch=250, val_iterations_per_epoch=50,
        description="nnU-Net defaults: 5-fold 3d_fullres, 1000 x 250 iterations (GPU days)"),
}


@dataclass(frozen=True)
class TrainingConfig:
    """Where the labelled data is, where the model goes, and how hard to train."""

    data_dir: Path
    weights_dir: Path
    work_dir: Path
    profile: TrainingProfile = PROFILES["cpu-quick"]
    sequence: str = GED4
    dataset_id: int = 501
    device: str = "auto"
    num_processes: int = field(default_factory=available_cpus)


@contextlib.contextmanager
def nnunet_environment(work_dir: Path) -> Iterator[dict[str, Path]]:
    """nnU-Net's three folders under ``work_dir``, our trainers on its search path, and no
    torch.compile (slow and fragile on CPU)."""
    paths = {name: Path(work_dir) / name
             for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    with scoped_environ(**{k: str(v) for k, v in paths.items()},
                        nnUNet_compile=os.environ.get("nnUNet_compile", "f"),
                        nnUNet_extTrainer=trainer_search_path(os.environ.get("nnUNet_extTrainer"))):
        yield paths


def write_raw_dataset(cases: list[Support], raw_root: Path, dataset_name: str,
                      sequence: str, ignore: bool = False) -> Path:
    """nnU-Net raw folder (imagesTr/labelsTr/dataset.json); masks are checked against their image.

    Masks are binarised, except with ``ignore``: then value ``IGNORE_LABEL`` is kept as nnU-Net's
    ignore label (voxels that contribute no loss).
    """
    folder = raw_root / dataset_name
    shutil.rmtree(folder, ignore_errors=True)
    for case in cases:
        image = read_volume(case.image)
        mask = sitk.ReadImage(str(case.mask))
        if mask.GetSize() != image.GetSize():
            raise InputError(case.mask, f"mask size {mask.GetSize()} differs from image size "
                             f"{image.GetSize()} ({case.image.name})")
        if ignore:
            mask = sitk.Cast(sitk.Clamp(mask, sitk.sitkInt32, 0, IGNORE_LABEL), sitk.sitkUInt8)
        else:
            mask = sitk.Cast(mask > 0, sitk.sitkUInt8)
        mask.CopyInformation(image)  # tiny header differences must not fail nnU-Net's checks
        # nnU-Net ignores direction: train in the one orientation inference reorients to
        image, mask = reorient(image).image, reorient(mask).image
        write_image_atomic(image, folder / "imagesTr" / f"{case.case}_0000.nii.gz")
        write_image_atomic(mask, folder / "labelsTr" / f"{case.case}.nii.gz")
    labels = {"background": 0, "liver": 1, **({"ignore": IGNORE_LABEL} if ignore else {})}
    dataset = {"channel_names": {"0": f"MRI_{sequence}"}, "labels": labels,
               "numTraining": len(cases), "file_ending": ".nii.gz",
               "name": dataset_name, "description": f"sslmedsam2 {sequence} liver"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def plan_and_preprocess(dataset_id: int, profile: TrainingProfile, num_processes: int,
                        reuse: dict | None = None) -> dict:
    """Fingerprint + plan + preprocess with nnU-Net; narrows the network for light profiles.
    ``reuse``: another model's plans, taken as they are (a warm start needs its architecture)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    # planning calls torch.set_num_threads(nnUNet_n_proc_DA), which must be >= 1
    with quiet_stdout(), scoped_environ(nnUNet_n_proc_DA=str(max(1, num_processes))):
        extract_fingerprints([dataset_id], num_processes=num_processes, check_dataset_integrity=True,
                             verbose=False, show_progress_bar=False)
        if reuse is None:
            plan_experiments([dataset_id], gpu_memory_target_in_gb=profile.vram_target_gb)
    dataset_name = convert_id_to_dataset_name(dataset_id)
    plans_file = Path(nnUNet_preprocessed.require()) / dataset_name / "nnUNetPlans.json"
    if reuse is not None:  # nnU-Net's planner would also have copied dataset.json
        plans = {**reuse, "dataset_name": dataset_name}
        shutil.copy2(Path(nnUNet_raw.require()) / dataset_name / "dataset.json", plans_file.parent)
    else:
        plans = json.loads(plans_file.read_text())
        if profile.width_divisor > 1:
            arch = plans["configurations"][profile.configuration]["architecture"]["arch_kwargs"]
            arch["features_per_stage"] = [max(4, f // profile.width_divisor)
                                          for f in arch["features_per_stage"]]
    plans_file.write_text(json.dumps(plans, indent=2))
    with quiet_stdout():
        preprocess([dataset_id], configurations=(profile.configuration,),
                   num_processes=(num_processes,), verbose=False, show_progress_bar=False)
    return plans


def train_fold(plans: dict, dataset_json: dict, fold: str, profile: TrainingProfile, device,
               log_path: Path, label: str, show_progress: bool = True,
               start_from: Path | None = None) -> Path:
    """Train one fold with the profile's schedule; returns the model folder nnU-Net wrote.
    ``start_from``: a checkpoint of the same architecture whose weights training starts from.

    nnU-Net's own output goes to ``log_path``; the terminal gets a progress bar and warnings
    (see :mod:`sslmedsam2.training.display`)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    with fold_output(log_path, label):
        trainer_class = recursive_find_trainer_class_by_name(profile.trainer)
        # nnU-Net 2.8 passes the resume flag inside the plans dict
        trainer = trainer_class(plans={**plans, "continue_training": False},
                                configuration=profile.configuration,
                                fold=fold if fold == "all" else int(fold), dataset_json=dataset_json,
                                device=device)
        trainer.num_epochs = profile.epochs
        trainer.num_iterations_per_epoch = profile.iterations_per_epoch
        trainer.num_val_iterations_per_epoch = profile.val_iterations_per_epoch
        trainer.save_every = max(1, profile.epochs)
        if start_from is not None:
            import torch

            trainer.initialize()
            checkpoint = torch.load(start_from, map_location="cpu", weights_only=False)
            trainer.network.load_state_dict(checkpoint["network_weights"])
        # augmentation in the main process: worker pools die under small shared memory and gain
        # nothing on 2 cores
        with attach_epoch_bar(trainer, label, show_progress), \
                scoped_environ(nnUNet_n_proc_DA=os.environ.get("nnUNet_n_proc_DA", "0")):
            trainer.run_training()
    return Path(trainer.output_folder_base)


def export_model(model_folder: Path, weights_dir: Path, sequence: str, folds: tuple[str, ...],
                 provenance: dict) -> Path:
    """Copy plans, dataset.json and final checkpoints into ``<weights>/nnunet/<SEQ>/<model>/``."""
    target = Path(weights_dir) / "nnunet" / sequence / model_folder.name
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy2(model_folder / name, staging / name)
    for fold in folds:
        (staging / f"fold_{fold}").mkdir()
        shutil.copy2(model_folder / f"fold_{fold}" / "checkpoint_final.pth",
                     staging / f"fold_{fold}" / "checkpoint_final.pth")
    (staging / "sslmedsam2_training.json").write_text(json.dumps(provenance, indent=2, default=str))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


_DONE = ".sslmedsam2-done"


def fit_nnunet(cases: list[Support], work_dir: Path, profile: TrainingProfile, sequence: str,
               dataset_id: int, device, num_processes: int, ignore: bool = False,
               executor: Executor | None = None, seed: int | None = None, label: str = "",
               show_progress: bool = True, warm_start: Path | None = None) -> Path:
    """Raw dataset -> plan/preprocess -> every fold of ``profile``; returns the model folder.

    ``warm_start``: a trained model folder (same configuration) whose plans this training takes
    and whose weights each fold starts from (its fold of the same name, else its first).

    Each fold shows a progress bar named ``label`` (default: the sequence) unless
    ``show_progress`` is off; nnU-Net's output goes to ``work_dir/fold_<fold>.log``.

    Folds go to ``executor`` as one task each (default: here, one after another), fold k seeded
    with ``seed + k`` wherever it runs (fold ``all``: ``seed``). Resumable:
    each finished step leaves a marker, and a rerun with the same ``work_dir`` skips marked steps
    (a fold interrupted mid-training is retrained from scratch). Redoing an early step clears
    the markers after it.
    """
    work_dir = Path(work_dir).resolve()
    dataset_name = f"Dataset{dataset_id:03d}_SSL{sequence}"
    model_folder = trained_model_folder(work_dir, profile, sequence, dataset_id)
    with nnunet_environment(work_dir) as paths:
        raw_done, plan_done = work_dir / f"{_DONE}-raw", work_dir / f"{_DONE}-plan"
        if not raw_done.is_file():
            plan_done.unlink(missing_ok=True)
            shutil.rmtree(model_folder, ignore_errors=True)
            write_raw_dataset(cases, paths["nnUNet_raw"], dataset_name, sequence, ignore=ignore)
            raw_done.touch()
        if not plan_done.is_file():
            shutil.rmtree(model_folder, ignore_errors=True)
            reuse = json.loads((warm_start / "plans.json").read_text()) if warm_start else None
            plan_and_preprocess(dataset_id, profile, num_processes, reuse)
            plan_done.touch()
    todo = [fold for fold in profile.folds if not (model_folder / f"fold_{fold}" / _DONE).is_file()]
    starts = {fold: start_checkpoint(warm_start, fold) if warm_start else None for fold in todo}
    for fold in sorted(set(profile.folds) - set(todo)):
        log.info("%s fold %s already trained (%s)", sequence, fold, model_folder)
    executor = executor or LocalExecutor()
    where = executor.fold_device(str(device))
    seconds = executor.run_tasks(
        train_fold_task, [(work_dir, dataset_name, fold, profile, where, fold_seed(seed, fold),
                           f"{label or sequence} fold {fold}", show_progress, starts[fold])
                          for fold in todo],
        desc=f"{sequence} folds")
    for fold, took in zip(todo, seconds):
        log.info("%s fold %s trained in %.0f s", label or sequence, fold, took,
                 extra=FILE_ONLY if show_progress else None)
    return model_folder


def trained_model_folder(work_dir: Path, profile: TrainingProfile, sequence: str,
                         dataset_id: int) -> Path:
    """Where :func:`fit_nnunet` with these arguments leaves its model."""
    return (Path(work_dir).resolve() / "nnUNet_results" / f"Dataset{dataset_id:03d}_SSL{sequence}"
            / profile.model_folder_name)


def start_checkpoint(model_folder: Path, fold: str) -> Path:
    """The checkpoint a warm-started ``fold`` begins from: the same fold's, else the first."""
    same = model_folder / f"fold_{fold}" / "checkpoint_final.pth"
    found = [same] if same.is_file() else sorted(model_folder.glob("fold_*/checkpoint_final.pth"))
    if not found:
        raise SSLMedSAM2Error(f"{model_folder}: no trained fold to warm-start from")
    return found[0]


def fold_seed(seed: int | None, fold: str) -> int | None:
    return None if seed is None else seed + (0 if fold == "all" else int(fold))


def train_fold_task(work_dir: Path, dataset_name: str, fold: str, profile: TrainingProfile,
                    device: str, seed: int | None = None, label: str = "",
                    show_progress: bool = True, start_from: Path | None = None) -> float:
    """One fold of a planned dataset under ``work_dir``, then its done marker; returns seconds.
    Reads the preprocessed data and plans, writes only ``fold_<fold>/`` (and nnU-Net's copies
    of plans.json and dataset.json beside it), so folds can train at once on different nodes."""
    started = time.perf_counter()
    with nnunet_environment(Path(work_dir)) as paths:
        model_folder = paths["nnUNet_results"] / dataset_name / profile.model_folder_name
        plans = json.loads((paths["nnUNet_preprocessed"] / dataset_name / "nnUNetPlans.json").read_text())
        dataset_json = json.loads((paths["nnUNet_raw"] / dataset_name / "dataset.json").read_text())
        shutil.rmtree(model_folder / f"fold_{fold}", ignore_errors=True)
        if seed is not None:
            seed_everything(seed)
        train_fold(plans, dataset_json, fold, profile, resolve_device(device),
                   Path(work_dir) / f"fold_{fold}.log", label or f"fold {fold}", show_progress,
                   start_from)
        (model_folder / f"fold_{fold}" / _DONE).touch()
    return time.perf_counter() - started


def check_folds(profile: TrainingProfile, n_cases: int, where: object) -> None:
    """Cross-validation folds need at least 5 cases; say so before any work is done."""
    if n_cases < 5 and any(f != "all" for f in profile.folds):
        raise SSLMedSAM2Error(f"profile {profile.name} trains cross-validation folds, which need >= 5 "
                              f"training cases; {where} has {n_cases}")


def train_model(config: TrainingConfig) -> Path:
    """Labelled cases -> trained nnU-Net -> exported model folder (returned)."""
    cases = find_supports(config.data_dir, config.sequence)
    if not cases:
        raise SSLMedSAM2Error(f"{config.data_dir}: no labelled {config.sequence} cases "
                              f"(expected <case>/{config.sequence}.nii.gz with mask_{config.sequence}.nii.gz)")
    profile = config.profile
    check_folds(profile, len(cases), config.data_dir)
    device = resolve_device(config.device)
    configure_threads(None)
    started = time.perf_counter()
    log.info("training %s on %d labelled case(s), profile %s (%s), device %s", config.sequence,
             len(cases), profile.name, profile.description, device)
    model_folder = fit_nnunet(cases, config.work_dir, profile, config.sequence, config.dataset_id,
                              device, config.num_processes)
    provenance = {"profile": asdict(profile), "cases": [c.case for c in cases],
                  "data_dir": str(config.data_dir), "device": str(device),
                  "seconds": round(time.perf_counter() - started, 1)}
    target = export_model(model_folder, config.weights_dir, config.sequence, profile.folds, provenance)
    log.info("exported %s in %.0f s total", target, time.perf_counter() - started)
    return target
