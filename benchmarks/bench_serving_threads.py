"""What does serving on one registration thread cost, and does a rerun write the same masks?

``process.py`` serves an SSL export as the model averaged with the atlas, so every case registers
the weights' supports onto it with ANTs. By default it runs those registrations on one thread
(``--deterministic``); ``--threaded-registration`` gives them ITK's threads. Here each mode serves
the same cases ``--repeats`` times, each run a fresh ``process.py`` as a container would start it,
alternating the modes so that both share the machine's noise.

Printed per mode: seconds per case (the summary's, model and registration included) and per run
(loading included), pinned / threaded side by side, how many cases every repeat wrote
identically, the largest Dice swing between repeats of one case, and the mean Dice against the
collection's masks (cases the weights were trained on score high: pass held-out ones).

    python benchmarks/bench_serving_threads.py --weights RUN/weights [--data DIR]
        [--cases chaos_mr_t2_15,chaos_mr_t2_20] [--repeats 2] [--work runs/bench_serving_threads]
        [--json benchmarks/raw/serving_threads.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from bench_fewshot_real import DEFAULT_DATA
from tqdm import tqdm

from sslmedsam2.datasets import read_collection, require_clean
from sslmedsam2.evaluation.metrics import compute_metrics
from sslmedsam2.registration.syn import unpinned_environment

REPO = Path(__file__).resolve().parents[1]
MODES = {"threads": ["--threaded-registration"], "pinned": []}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True, help="an exported weights folder")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="a labelled collection, read in place (default: %(default)s)")
    parser.add_argument("--cases", type=lambda text: text.split(","), default=None,
                        help="comma-separated patients to serve (default: every labelled one)")
    parser.add_argument("--repeats", type=int, default=2, help="fresh runs per mode")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_serving_threads"),
                        help="the input links and every run's output folder")
    parser.add_argument("--json", type=Path, default=None, help="write raw figures here")
    args = parser.parse_args()
    patients = require_clean(read_collection(args.data, "MR")).labelled
    chosen = [p for p in patients if args.cases is None or p.case in args.cases]
    if not chosen:
        raise SystemExit(f"{args.data}: none of {args.cases} is a labelled patient there")
    inputs = link_inputs(chosen, args.work / "input")
    runs = []
    for repeat, mode in tqdm(list(itertools.product(range(args.repeats), MODES)), desc="runs", unit="run"):
        runs.append({"mode": mode, "repeat": repeat,
                     **serve(inputs, args.work / f"{mode}_{repeat}", args.weights, MODES[mode])})
    summary = summarise(runs, chosen, args.work)
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps({
            "command": "python benchmarks/bench_serving_threads.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.node()} {platform.processor()}", "cpus": os.cpu_count(),
            "summary": summary, "runs": runs}, indent=1))
    return 0


def link_inputs(patients: list, folder: Path) -> Path:
    """A plain input folder of ``<case>.nii.gz`` links: the collection stays where it lies."""
    folder.mkdir(parents=True, exist_ok=True)
    for patient in patients:
        link = folder / f"{patient.case}.nii.gz"
        if not link.exists():
            link.symlink_to(Path(patient.image).resolve())
    return folder


def serve(inputs: Path, out: Path, weights: Path, flags: list[str]) -> dict:
    """One fresh process.py over ``inputs``, with no thread count inherited from here."""
    command = [sys.executable, str(REPO / "process.py"), "--input", str(inputs), "--output", str(out),
               "--weights", str(weights), *flags]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env=unpinned_environment())
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"process.py {' '.join(flags)}: {result.stderr.strip().splitlines()[-1]}")
    cases = json.loads((out / "sslmedsam2-summary.json").read_text())["cases"]
    return {"wall_seconds": round(wall, 1),
            "case_seconds": {Path(c["input"]).name.split(".")[0]: c["seconds"] for c in cases},
            "engines": sorted({c["engine"] for c in cases})}


def summarise(runs: list[dict], patients: list, work: Path) -> dict[str, dict]:
    """Per mode: seconds, whether every repeat wrote the same masks, Dice and its swing."""
    summary = {}
    truths = [read_truth(patient.mask) for patient in patients]  # once for both modes
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        identical, swings, dice = 0, [], {}
        for patient, (truth, spacing) in zip(patients, truths):
            masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(work / f"{mode}_{r['repeat']}"
                                                                / f"{patient.case}_pred.nii.gz")))
                     for r in mine]
            identical += all(np.array_equal(masks[0], other) for other in masks[1:])
            scores = [compute_metrics(m > 0, truth, spacing).dice for m in masks]
            swings.append(max(scores) - min(scores))
            dice[patient.case] = [round(score, 4) for score in scores]
        seconds = [s for r in mine for s in r["case_seconds"].values()]
        summary[mode] = {
            "case_seconds_mean": round(statistics.mean(seconds), 1),
            "run_seconds_mean": round(statistics.mean(r["wall_seconds"] for r in mine), 1),
            "cases_identical": identical, "cases": len(patients),
            "largest_dice_swing": round(max(swings), 4),
            "dice_mean": round(statistics.mean(d for scores in dice.values() for d in scores), 4),
            "engines": sorted({e for r in mine for e in r["engines"]}), "dice_per_case": dice}
    summary["pinned"]["case_seconds_ratio"] = round(summary["pinned"]["case_seconds_mean"]
                                                    / summary["threads"]["case_seconds_mean"], 2)
    return summary


def read_truth(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A manual mask as a z-y-x boolean array and its spacing in the same order."""
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image) > 0, image.GetSpacing()[::-1]


def print_table(summary: dict[str, dict]) -> None:
    print("| mode | s per case | pinned / threads | s per run | repeats identical | largest Dice swing "
          "| Dice mean | engines |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, s in summary.items():
        print(f"| {mode} | {s['case_seconds_mean']} | {s.get('case_seconds_ratio', '')} | "
              f"{s['run_seconds_mean']} | {s['cases_identical']} of {s['cases']} | "
              f"{s['largest_dice_swing']} | {s['dice_mean']} | {', '.join(s['engines'])} |")


if __name__ == "__main__":
    raise SystemExit(main())
