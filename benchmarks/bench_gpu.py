"""GPU figures in one short run (a lent GPU machine has minutes, not hours): what a GPU user pays.

Sections, each written to ``--out`` (results.json, results.md) as soon as it ends, so a run cut
short still reports what it finished:

  env      card, driver, torch, bf16 support (issue 6: precision by device)
  nnunet   nnU-Net's stock planner on CARE-size volumes, a short real training (seconds per
           iteration of 3d_fullres), then inference per CARE-size case: 1 fold, 1 fold + mirroring
           TTA, and the paper's deployment (5 folds + TTA; the folds are copies of the trained one,
           same compute)
  process  ``process.py`` end to end on the GPU with its defaults (the container's per-case cost,
           imports and model loading included)
  tffs     TFFS-MedSAM2 in the paper's setting on one CARE-size query (640 x 520 x 64):
           MedSAM2-shaped tiny SAM2.1 at 512 px, random weights (cost, never quality), 10 supports
           x 5 whole-insert positions x both directions, bf16 autocast, peak GPU memory
  naive    ours vs the authors' scheme (every frame re-encoded, every support slice re-prompted)
           side by side on the same query with 2 supports x 2 insertions: speed-up and agreement
           under bf16 on the GPU

    python benchmarks/bench_gpu.py --out OUT [--budget 480] [--smoke]

``--smoke`` shrinks every size so the mechanics run on a CPU in a minute (no figures to keep).
The data are generated from the bundled example (sslmedsam2/data/abdomen-mr, Apache-2.0) and
resampled onto CARE vendor A's GED4 grid; voxels outside the source are set to 1 so that nnU-Net's
crop-to-nonzero keeps the whole CARE-size volume and plans for it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_inference import on_grid  # noqa: E402

from sslmedsam2.datasets.example import ExampleConfig, make_example  # noqa: E402
from sslmedsam2.engines.base import RuntimeOptions  # noqa: E402
from sslmedsam2.engines.nnunet import NnUNetEngine  # noqa: E402
from sslmedsam2.fewshot.checkpoints import build_predictor, resolve_checkpoint  # noqa: E402
from sslmedsam2.fewshot.tffs import TFFSConfig, TFFSSegmenter  # noqa: E402
from sslmedsam2.supports import find_supports, load_support  # noqa: E402
from sslmedsam2.training.supervised import TrainingProfile, export_model, fit_nnunet  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """Grid of the query / training volumes and of the supports, and how much to run."""

    query: tuple[int, int, int]  # x, y, z
    query_spacing: tuple[float, float, float]
    support: tuple[int, int, int]
    support_spacing: tuple[float, float, float]
    supports: int
    insertions: int
    train_cases: int
    epochs: int
    iterations: int
    sam2_size: int
    vram_gb: float | None


CARE = Sizes(query=(640, 520, 64), query_spacing=(0.59, 0.59, 3.5),
             # supports with the liver on ~40 slices, like CARE's labelled GED4 volumes
             support=(640, 520, 48), support_spacing=(0.59, 0.59, 1.4),
             supports=10, insertions=5, train_cases=5, epochs=3, iterations=40, sam2_size=512,
             vram_gb=None)
SMOKE = Sizes(query=(96, 80, 8), query_spacing=(3.9, 3.9, 8.0), support=(96, 80, 6),
              support_spacing=(3.9, 3.9, 8.0), supports=2, insertions=1, train_cases=3, epochs=1,
              iterations=2, sam2_size=128, vram_gb=0.5)


class Report:
    """results.json + results.md under ``out``, rewritten after every section."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.sections: dict[str, dict] = {}
        out.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, figures: dict) -> None:
        self.sections[name] = figures
        print(f"== {name}: {json.dumps(figures, default=str)}", flush=True)
        (self.out / "results.json").write_text(json.dumps(self.sections, indent=2, default=str))
        lines = []
        for section, values in self.sections.items():
            lines += [f"## {section}", ""] + [f"- {k}: {v}" for k, v in values.items()] + [""]
        (self.out / "results.md").write_text("\n".join(lines))


def care_dataset(root: Path, sizes: Sizes, grid: str) -> Path:
    """Labelled example cases on the query grid (``grid='query'``) or the support grid, in CARE
    layout under ``root/train``; the first test case on the query grid as ``root/query.nii.gz``."""
    if (root / "done").is_file():
        return root
    source = root / "example"
    count = max(sizes.supports, sizes.train_cases)
    make_example(ExampleConfig(out_dir=source, cases=count, test_cases=1, vendors=("A",),
                               labelled_per_vendor=count))
    size, spacing = (sizes.query, sizes.query_spacing) if grid == "query" else (sizes.support,
                                                                                 sizes.support_spacing)
    for support in find_supports(source / "train"):
        image, mask = load_support(support)
        folder = root / "train" / "Vendor_A" / support.case
        folder.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(on_grid(image, size, spacing, sitk.sitkLinear, 1.0), str(folder / "GED4.nii.gz"))
        sitk.WriteImage(on_grid(mask, size, spacing, sitk.sitkNearestNeighbor, 0.0),
                        str(folder / "mask_GED4.nii.gz"))
    test = sorted((source / "test" / "input").glob("*/*/GED4.nii.gz"))[0]
    query = on_grid(sitk.ReadImage(str(test)), sizes.query, sizes.query_spacing, sitk.sitkLinear, 1.0)
    sitk.WriteImage(query, str(root / "query.nii.gz"))
    (root / "done").touch()
    return root


def gpu_memory() -> dict:
    if not torch.cuda.is_available():
        return {}
    return {"peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def reset_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def env_section(device: torch.device) -> dict:
    figures = {"python": platform.python_version(), "torch": torch.__version__,
               "device": str(device), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        figures.update(card=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                       bf16_supported=torch.cuda.is_bf16_supported(),
                       capability=".".join(map(str, torch.cuda.get_device_capability())))
        try:
            figures["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            figures["driver"] = "nvidia-smi not available"
    return figures


def tffs_setup(sizes: Sizes, data: Path, device: torch.device):
    torch.manual_seed(0)
    overrides = [f"++model.image_size={sizes.sam2_size}"] if sizes.sam2_size != 512 else None
    predictor = build_predictor(resolve_checkpoint(None, name="medsam2", allow_random=True), device,
                                hydra_overrides=overrides)
    supports = [load_support(s) for s in find_supports(data / "train")][: sizes.supports]
    query = sitk.ReadImage(str(data / "query.nii.gz"))
    return predictor, supports, query


def tffs_section(sizes: Sizes, data: Path, device: torch.device) -> dict:
    """The paper's setting with our exact caches: one query, supports encoded on the way (a
    batch's next query only skips the supports' encoder frames)."""
    predictor, supports, query = tffs_setup(sizes, data, device)
    slices = [int(sitk.GetArrayViewFromImage(m).any(axis=(1, 2)).sum()) for _, m in supports]
    segmenter = TFFSSegmenter(predictor, supports, TFFSConfig(insertions=sizes.insertions))
    reset_memory()
    result = segmenter.segment(query)
    return {"query_voxels": list(query.GetSize()), "supports": len(supports),
            "support_liver_slices": slices, "insertions": sizes.insertions,
            "videos": len(supports) * sizes.insertions * 2, "maps": result.maps,
            "query_s": round(result.seconds, 1), "encoder_frames": result.encoder_frames,
            "memory_encoder_calls": result.memory_encoder_calls,
            "support_cache_mb": round(segmenter.cache.used_bytes / 2**20, 1), **gpu_memory()}


def naive_section(sizes: Sizes, data: Path, device: torch.device) -> dict:
    """Ours vs the authors' scheme side by side on the same query, on a 2-support x 2-insertion
    slice of the paper's setting (the full naive arm would not fit a lease)."""
    predictor, supports, query = tffs_setup(sizes, data, device)
    supports = supports[:2]
    figures = {"supports": len(supports), "insertions": 2}
    results = {}
    for arm, cached in (("ours", True), ("naive", False)):
        reset_memory()
        config = TFFSConfig(insertions=2, cache_encoder=cached)
        results[arm] = TFFSSegmenter(predictor, supports, config).segment(query)
        figures.update({f"{arm}_s": round(results[arm].seconds, 1),
                        f"{arm}_encoder_frames": results[arm].encoder_frames,
                        f"{arm}_memory_encoder_calls": results[arm].memory_encoder_calls,
                        **{f"{k}_{arm}": v for k, v in gpu_memory().items()}})
    ours, naive = results["ours"].probability, results["naive"].probability
    ours_mask, naive_mask = ours >= 0.5, naive >= 0.5
    overlap = 2 * (ours_mask & naive_mask).sum() / max(1, ours_mask.sum() + naive_mask.sum())
    figures.update(speedup=round(results["naive"].seconds / results["ours"].seconds, 2),
                   max_probability_difference=float(np.abs(naive - ours).max()),
                   mask_dice_ours_vs_naive=round(float(overlap), 5))
    return figures


def epoch_seconds(checkpoint: Path) -> list[float]:
    logging = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]
    return [round(e - s, 2) for s, e in zip(logging["epoch_start_timestamps"],
                                            logging["epoch_end_timestamps"])]


def nnunet_section(sizes: Sizes, data: Path, work: Path, device: torch.device,
                   workers: int, predict: bool = True) -> tuple[dict, Path]:
    """Stock plan on CARE-size data, a short real training, then timed predictions."""
    profile = TrainingProfile(
        name="gpu-bench", configuration="3d_fullres", folds=("all",), epochs=sizes.epochs,
        iterations_per_epoch=sizes.iterations, val_iterations_per_epoch=2,
        trainer="nnUNetTrainerSSLCPU", vram_target_gb=sizes.vram_gb)
    cases = find_supports(data / "train")[: sizes.train_cases]
    started = time.perf_counter()
    os.environ["nnUNet_n_proc_DA"] = str(workers)
    model = fit_nnunet(cases, work / "nnunet", profile, "GED4", 990, device,
                       num_processes=min(8, os.cpu_count() or 1))
    fit_s = time.perf_counter() - started
    plans = json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]
    epochs = epoch_seconds(model / "fold_all" / "checkpoint_final.pth")
    weights = work / "weights"
    target = export_model(model, weights, "GED4", ("all",), {"profile": "gpu-bench"})
    for fold in range(5):  # the paper's 5-fold ensemble: same compute as 5 distinct folds
        shutil.copytree(target / "fold_all", target / f"fold_{fold}", dirs_exist_ok=True)
    shutil.rmtree(target / "fold_all")  # process.py on a GPU ensembles every fold it finds
    figures = {"patch_size": plans["patch_size"], "batch_size": plans["batch_size"],
               "spacing": plans["spacing"], "median_shape": plans["median_image_size_in_voxels"],
               "train_cases": len(cases), "data_augmentation_workers": workers,
               "torch_compile": os.environ.get("nnUNet_compile", "f (our default)"),
               "epoch_seconds": epochs,
               "seconds_per_iteration": round(min(epochs[1:] or epochs) /
                                              (sizes.iterations + 2), 3),
               "plan_preprocess_train_s": round(fit_s, 1)}
    if not predict:
        return figures, weights
    volume = sitk.ReadImage(str(data / "query.nii.gz"))
    for label, folds, tta in (("1fold", ("0",), False), ("1fold_tta", ("0",), True),
                              ("5folds_tta", tuple(str(f) for f in range(5)), True)):
        engine = NnUNetEngine(weights, RuntimeOptions(device=str(device), tta=tta, folds=folds))
        engine.load("GED4")
        engine.segment(volume, "GED4")  # warm-up: cuDNN autotuning, allocator
        reset_memory()
        tick = time.perf_counter()
        result = engine.segment(volume, "GED4")
        figures[f"predict_{label}_s"] = round(time.perf_counter() - tick, 2)
        figures[f"predict_{label}_detail"] = result.detail
        figures.update({f"{k}_{label}": v for k, v in gpu_memory().items()})
        del engine
    return figures, weights


def process_section(data: Path, weights: Path, work: Path, device: torch.device) -> dict:
    """The container's command on one CARE-size case, defaults for the device."""
    case = work / "process_in" / "Vendor_A" / "9001-A-S1"
    case.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data / "query.nii.gz", case / "GED4.nii.gz")
    out = work / "process_out"
    shutil.rmtree(out, ignore_errors=True)
    tick = time.perf_counter()
    run = subprocess.run([sys.executable, str(REPO / "process.py"), "--input", str(case.parent.parent),
                          "--output", str(out), "--weights", str(weights), "--device", str(device),
                          "--engines", "nnunet"], capture_output=True, text=True)
    seconds = time.perf_counter() - tick
    summary_file = out / "sslmedsam2-summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return {"exit_code": run.returncode, "wall_s": round(seconds, 1),
            "summary_cases": summary.get("cases", summary)
            if run.returncode == 0 else run.stderr[-1500:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results.json / results.md go here")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-gpu"))
    parser.add_argument("--budget", type=float, default=480,
                        help="seconds; sections that would not fit are skipped (default 480)")
    parser.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1),
                        help="nnU-Net data-augmentation workers while training")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed")
    parser.add_argument("--train-only", action="store_true",
                        help="nnunet: stop after training and export (weights for bench_memory.py)")
    parser.add_argument("--sections", nargs="+",
                        default=["env", "nnunet", "process", "tffs", "naive"])
    args = parser.parse_args()
    started = time.perf_counter()
    left = lambda: args.budget - (time.perf_counter() - started)  # noqa: E731
    sizes = SMOKE if args.smoke else CARE
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        parser.error("no CUDA GPU visible (use --smoke to check the mechanics on a CPU)")
    report = Report(args.out)
    report.add("env", env_section(device))
    weights = None
    # rough seconds each section needs on a Hopper GPU, so a late section is skipped, not cut
    need = {"nnunet": 150, "tffs": 120, "process": 45, "naive": 45}
    for section in [s for s in args.sections if s != "env"]:
        if left() < (0 if args.smoke else need[section]):
            report.add(section, {"skipped": f"{left():.0f} s of the budget left"})
            continue
        tick = time.perf_counter()
        try:
            with torch.inference_mode(section in ("tffs", "naive")):
                if section in ("tffs", "naive"):
                    data = care_dataset(args.work / "support-grid", sizes, "support")
                    run = tffs_section if section == "tffs" else naive_section
                    figures = run(sizes, data, device)
                elif section == "nnunet":
                    data = care_dataset(args.work / "query-grid", sizes, "query")
                    figures, weights = nnunet_section(sizes, data, args.work, device, args.workers,
                                                     predict=not args.train_only)
                else:
                    if weights is None:
                        raise RuntimeError("needs the nnunet section first")
                    figures = process_section(args.work / "query-grid", weights, args.work, device)
        except Exception as error:  # one broken section must not cost the others' figures
            figures = {"error": f"{type(error).__name__}: {str(error)[:800]}"}
        figures["section_s"] = round(time.perf_counter() - tick, 1)
        report.add(section, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
