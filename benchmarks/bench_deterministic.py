"""Does a rerun of the atlas engine repeat itself, and what does one registration thread cost?

ANTs reads its thread count once per process, so every run here is a fresh process: per query
(default: the 14 CHAOS MR T2-SPIR patients in ../shared/data/chaos-mr-t2, read in place;
``--supports`` others as supports, default one, the same seeded draw as bench_fewshot_real.py),
``--repeats`` runs on ITK's default threads and as many pinned to one
(``registration.syn.pin_registration_threads``), alternating so that both modes share the
machine's noise. Each run is the engine's own labelling
(``propagate``, default ``AtlasConfig``) with its registration, fusion and intensity correction.

Printed per mode: seconds per query (mean, and pinned / threaded side by side), whether the
repeats' probability maps are identical, the largest Dice swing between repeats of one query, and
the mean Dice against the manual masks.

    python benchmarks/bench_deterministic.py [--data DIR] [--queries N] [--repeats 2] [--supports 1]
        [--work runs/bench_deterministic] [--json benchmarks/raw/deterministic_chaos.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from bench_fewshot_real import DEFAULT_DATA, support_draw
from tqdm import tqdm

from sslmedsam2.datasets import read_collection, require_clean
from sslmedsam2.evaluation.metrics import compute_metrics
from sslmedsam2.registration.syn import unpinned_environment

MODES = ("threads", "pinned")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="a labelled collection, read in place (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=None, help="first N patients only")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per query and mode")
    parser.add_argument("--supports", type=int, default=1, help="supports per query (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the support draws")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_deterministic"),
                        help="the runs' probability maps")
    parser.add_argument("--json", type=Path, default=None, help="write raw figures here")
    parser.add_argument("--worker", nargs=4, metavar=("MODE", "QUERY", "SUPPORTS", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker, data=args.data)
    patients = require_clean(read_collection(args.data, "MR")).labelled
    queries = patients[: args.queries] if args.queries else patients
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for query in tqdm(queries, desc="queries", unit="patient"):
        supports = ",".join(s.case for s in support_draw(query, patients, args.supports, args.seed))
        for repeat, mode in itertools.product(range(args.repeats), MODES):
            out = args.work / f"{query.case}_{mode}_{repeat}.npy"
            rows.append({"query": query.case, "supports": supports, "mode": mode, "repeat": repeat,
                         **run_worker(args.data, mode, query.case, supports, out)})
    summary = summarise(rows, args.work)
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps({
            "command": "python benchmarks/bench_deterministic.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.node()} {platform.processor()}", "summary": summary, "rows": rows},
            indent=1))
    return 0


def worker(mode: str, query: str, supports: str, out: str, data: Path) -> int:
    """One labelling in this fresh process; prints its seconds and Dice as JSON."""
    from sslmedsam2.registration.label_propagation import AtlasConfig, propagate
    from sslmedsam2.registration.syn import pin_registration_threads  # before ants loads

    if mode == "pinned" and not pin_registration_threads():
        raise SystemExit("could not pin: ants was loaded first")
    patients = {p.case: p for p in read_collection(data, "MR").labelled}
    image = sitk.ReadImage(str(patients[query].image))
    pairs = [(sitk.ReadImage(str(patients[case].image)), sitk.ReadImage(str(patients[case].mask)))
             for case in supports.split(",")]
    started = time.perf_counter()
    fused = propagate(image, pairs, AtlasConfig())
    seconds = time.perf_counter() - started
    np.save(out, fused.probability.astype(np.float32))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(patients[query].mask))) > 0
    dice = compute_metrics(fused.mask, truth, image.GetSpacing()[::-1]).dice
    print(json.dumps({"seconds": round(seconds, 2), "dice": round(dice, 4)}))
    return 0


def run_worker(data: Path, mode: str, query: str, supports: str, out: Path) -> dict:
    command = [sys.executable, __file__, "--data", str(data), "--worker", mode, query, supports, str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env=unpinned_environment())
    if result.returncode != 0:
        raise SystemExit(f"{query} ({mode}): {result.stderr.strip().splitlines()[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict], work: Path) -> dict[str, dict]:
    """Per mode: seconds, whether repeats match, the largest Dice swing between repeats."""
    summary = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        identical, swings = [], []
        for query in dict.fromkeys(r["query"] for r in mine):
            runs = [r for r in mine if r["query"] == query]
            maps = [np.load(work / f"{query}_{mode}_{r['repeat']}.npy") for r in runs]
            identical.append(all(np.array_equal(maps[0], other) for other in maps[1:]))
            swings.append(max(r["dice"] for r in runs) - min(r["dice"] for r in runs))
        summary[mode] = {"seconds_mean": round(statistics.mean(r["seconds"] for r in mine), 1),
                         "dice_mean": round(statistics.mean(r["dice"] for r in mine), 4),
                         "queries_identical": sum(identical), "queries": len(identical),
                         "largest_dice_swing": round(max(swings), 4)}
    summary["pinned"]["seconds_ratio"] = round(summary["pinned"]["seconds_mean"]
                                               / summary["threads"]["seconds_mean"], 2)
    return summary


def print_table(summary: dict[str, dict]) -> None:
    print("| mode | s per query | pinned / threads | repeats identical | largest Dice swing | Dice mean |")
    print("|---|---|---|---|---|---|")
    for mode, s in summary.items():
        print(f"| {mode} | {s['seconds_mean']} | {s.get('seconds_ratio', '')} | "
              f"{s['queries_identical']} of {s['queries']} | {s['largest_dice_swing']} | {s['dice_mean']} |")


if __name__ == "__main__":
    raise SystemExit(main())
