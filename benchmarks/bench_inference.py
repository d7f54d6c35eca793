"""Inference figures for benchmarks/RESULTS.md: wrapper overhead, peak memory, CPU seconds.

Side by side in one run on the same model and volumes:
  1. overhead: ``process.py`` vs a bare ``nnUNetPredictor`` script (both fresh processes: imports,
     model load, prediction, writing), and per case inside the process (our per-case seconds from
     the run summary vs the predictor's own ``predict_from_files_sequential`` call);
  2. peak RSS of ``process.py`` on a CARE-size volume (640 x 520 x 64 at 0.59 x 0.59 x 3.5 mm);
  3. seconds per CARE-size case on CPU for the default settings, ``--fast`` and ``--tta``, with the
     number of sliding-window patches.

    python benchmarks/bench_inference.py --weights runs/demo/weights --data runs/demo/data
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
CARE_SIZE = (640, 520, 64)
CARE_SPACING = (0.59, 0.59, 3.5)

BARE_NNUNET = """
import os, sys, torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
# how a bare nnU-Net finds trainers outside its package (the CPU profile's)
os.environ["nnUNet_extTrainer"] = sys.argv[5]
torch.set_num_threads(int(sys.argv[4]))
p = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False,
                    device=torch.device('cpu'), allow_tqdm=False)
p.initialize_from_trained_model_folder(sys.argv[1], use_folds=('all',))
import time; t = time.perf_counter()
p.predict_from_files_sequential([[sys.argv[2]]], sys.argv[3], save_probabilities=False,
                                overwrite=True)
print('CASE_SECONDS', time.perf_counter() - t)
"""

MAX_RSS = "import resource,subprocess,sys; r=subprocess.run(sys.argv[1:]); " \
          "print('MAX_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"


def on_grid(image: sitk.Image, size, spacing, interpolator=sitk.sitkLinear, outside: float = 0.0,
            pixel_type: int | None = None) -> sitk.Image:
    """``image`` resampled onto a grid of ``size``/``spacing``, same direction, centred on its
    field of view."""
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    reference = sitk.Image(list(size), image.GetPixelID())
    reference.SetSpacing(spacing)
    reference.SetDirection(image.GetDirection())
    offset = reference.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size])
    reference.SetOrigin([o + c - f for o, c, f in zip(reference.GetOrigin(), centre, offset)])
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, outside,
                         image.GetPixelID() if pixel_type is None else pixel_type)


def care_size_volume(source: Path, target: Path) -> Path:
    """Resample a case onto CARE vendor A's GED4 grid, centred on the original field of view."""
    resampled = on_grid(sitk.ReadImage(str(source)), CARE_SIZE, CARE_SPACING,
                        pixel_type=sitk.sitkInt16)
    target.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(resampled, str(target))
    return target


def timed(command: list[str]) -> tuple[float, str, int]:
    """Wall seconds, combined output and peak RSS (kB) of one fresh process."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", MAX_RSS, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"command failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-2000:]}")
    rss = int(next(l.split()[1] for l in result.stdout.splitlines() if l.startswith("MAX_RSS_KB")))
    return seconds, result.stdout + result.stderr, rss


def run_ours(volume: Path, out: Path, weights: Path, *flags: str) -> dict:
    seconds, _, rss = timed([sys.executable, str(REPO / "process.py"), "--input", str(volume),
                             "--output", str(out), "--weights", str(weights), *flags])
    case = json.loads((out / "sslmedsam2-summary.json").read_text())["cases"][0]
    return {"wall": seconds, "case": case["seconds"], "rss_mb": rss / 1024, "detail": case["message"]}


def run_bare(volume: Path, out: Path, model: Path, threads: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    from sslmedsam2.nnunet_trainers import TRAINER_DIR

    seconds, output, rss = timed([sys.executable, "-c", BARE_NNUNET, str(model), str(volume), str(out),
                                  str(threads), str(TRAINER_DIR)])
    case = float(next(l.split()[1] for l in output.splitlines() if l.startswith("CASE_SECONDS")))
    return {"wall": seconds, "case": case, "rss_mb": rss / 1024}


def overhead(volume: Path, weights: Path, model: Path, repeats: int, scratch: Path) -> list[str]:
    from sslmedsam2.runtime import available_cpus

    ours, bare = [], []
    for i in range(repeats):  # interleaved, so machine noise hits both sides alike
        ours.append(run_ours(volume, scratch / f"ours{i}", weights, "--fast"))
        bare.append(run_bare(volume, scratch / f"bare{i}", model, available_cpus()))
    wall = statistics.median(o["wall"] for o in ours) / statistics.median(b["wall"] for b in bare)
    case = statistics.median(o["case"] for o in ours) / statistics.median(b["case"] for b in bare)
    size = "x".join(map(str, sitk.ReadImage(str(volume)).GetSize()))
    return [
        f"| {size} | process.py | {statistics.median(o['wall'] for o in ours):.2f} | "
        f"{statistics.median(o['case'] for o in ours):.2f} |",
        f"| {size} | bare nnUNetPredictor | {statistics.median(b['wall'] for b in bare):.2f} | "
        f"{statistics.median(b['case'] for b in bare):.2f} |",
        f"| {size} | **ratio** | **{wall:.3f}x** | **{case:.3f}x** |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=REPO / "runs/demo/weights")
    parser.add_argument("--data", type=Path, default=REPO / "runs/demo/data",
                        help="make-example output (its first test GED4 is the source volume)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-tta", action="store_true", help="skip the (slow) --tta timing")
    args = parser.parse_args()
    model = next((args.weights / "nnunet" / "GED4").iterdir())
    source = sorted((args.data / "test" / "input").glob("*/*/GED4.nii.gz"))[0]
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        care = care_size_volume(source, scratch / "care" / "GED4_care_size.nii.gz")
        print(f"model: {model}\nsource: {source}\n")
        print("## 1. Wrapper overhead (median of", args.repeats, "runs, --fast, CPU)\n")
        print("| volume | program | wall s (fresh process) | case s (in process) |\n|---|---|---|---|")
        for volume in (source, care):
            print("\n".join(overhead(volume, args.weights, model, args.repeats, scratch / volume.stem)))
        print("\n## 2-3. CARE-size volume on CPU: seconds, patches, peak RSS\n")
        print("| settings | chosen | wall s | case s | peak RSS MB |\n|---|---|---|---|---|")
        settings = [("default", ()), ("--fast", ("--fast",))]
        if not args.skip_tta:
            settings.append(("--tta", ("--tta",)))
        for name, flags in settings:
            result = run_ours(care, scratch / f"care-{name}", args.weights, *flags)
            print(f"| {name} | {result['detail']} | {result['wall']:.1f} | {result['case']:.1f} | "
                  f"{result['rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
