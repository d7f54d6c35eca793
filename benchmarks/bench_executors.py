"""Pseudo-labelling throughput: the local executor vs Ray on this machine (issue 5).

Same engine (the atlas: registration of ``--supports`` labelled cases + vote), same cases, in one
run. A worker is a fixed share of the machine, so arms compare like with like:

* ``local 1 cpu``: this process limited to one thread (torch and ITK);
* ``ray x1 (1 cpu)``: one Ray worker of one CPU. Its time over the first arm's is Ray's overhead:
  task dispatch, worker start, engine load in the worker;
* ``ray x2 (1 cpu each)``: two such workers;
* ``local (all cpus)``: the default, this process with every thread;
* ``ray x1 (all cpus)``: one Ray worker holding every CPU.

Ray is started once before the arms (on a cluster it is already running); its start time is
reported on its own. A warm-up arm runs first and is discarded; then all arms run in turn,
``--repeats`` times, each labelling every case from scratch; the table gives medians.

    python benchmarks/bench_executors.py [--cases 24] [--supports 3] [--repeats 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import ray
import SimpleITK as sitk
import torch

from sslmedsam2.datasets.example import ExampleConfig, make_example
from sslmedsam2.engines.atlas import AtlasEngine
from sslmedsam2.executors import LocalExecutor, RayExecutor, Resources
from sslmedsam2.pseudo_label import CaseLabeller, find_queries, pseudo_label
from sslmedsam2.runtime import available_cpus, limit_threads
from sslmedsam2.supports import find_supports


def timed_arm(name: str, executor, recipe, queries, out: Path, threads: int) -> dict:
    """Seconds to label every case into a fresh ``out``, this process at ``threads`` threads."""
    shutil.rmtree(out, ignore_errors=True)
    saved = (torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    limit_threads(threads)
    try:
        started = time.perf_counter()
        records = pseudo_label(CaseLabeller(recipe, out, "GED4"), queries, progress=False,
                               executor=executor)
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(saved[0])
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved[1])
    ok = sum(r["status"] == "ok" for r in records)
    figures = {"arm": name, "cases": ok, "seconds": round(seconds, 1)}
    print(json.dumps(figures), flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24, help="unlabelled cases (default 24)")
    parser.add_argument("--supports", type=int, default=3,
                        help="supports registered per case (default 3, one per vendor)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of every arm (default 2)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cpus = available_cpus()
    scratch = Path(tempfile.mkdtemp(prefix="bench-executors-"))
    try:
        data = make_example(ExampleConfig(out_dir=scratch / "data", cases=args.cases + 3,
                                          test_cases=0, labelled_per_vendor=1, seed=3),
                            progress=False)
        supports = find_supports(data.train_dir)[: args.supports]
        queries = [q for q in find_queries(data.train_dir, "GED4")
                   if q.case not in {s.case for s in supports}][: args.cases]
        recipe = partial(AtlasEngine, supports, max_supports=len(supports))
        started = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=100 * 2**20,
                 log_to_driver=False, configure_logging=False)
        ray_start = round(time.perf_counter() - started, 1)
        # (name, executor, threads of this process while the arm runs)
        arms = [("local 1 cpu", LocalExecutor(), 1),
                ("ray x1 (1 cpu)", RayExecutor(workers=1, resources=Resources(cpus=1)), 1),
                ("ray x2 (1 cpu each)", RayExecutor(workers=2, resources=Resources(cpus=1)), 1),
                ("local (all cpus)", LocalExecutor(), cpus),
                ("ray x1 (all cpus)", RayExecutor(workers=1, resources=Resources(cpus=cpus)), 1)]
        timed_arm("warm-up", LocalExecutor(), recipe, queries, scratch / "out", cpus)
        runs: dict[str, list[float]] = {name: [] for name, _, _ in arms}
        for _ in range(args.repeats):
            for name, executor, threads in arms:
                runs[name].append(timed_arm(name, executor, recipe, queries, scratch / "out",
                                            threads)["seconds"])
        table = {name: {"seconds": round(statistics.median(times), 2), "runs": times,
                        "cases_per_minute": round(60 * len(queries) / statistics.median(times), 1)}
                 for name, times in runs.items()}
        single = table["local 1 cpu"]["seconds"]
        summary = {"cpus": cpus, "cases": len(queries), "supports": len(supports),
                   "ray_init_s": ray_start, "arms": table,
                   "ray_x1_overhead": round(table["ray x1 (1 cpu)"]["seconds"] / single - 1, 3),
                   "ray_x2_speedup_over_x1": round(table["ray x1 (1 cpu)"]["seconds"]
                                                   / table["ray x2 (1 cpu each)"]["seconds"], 2),
                   "ray_all_cpus_overhead": round(table["ray x1 (all cpus)"]["seconds"]
                                                  / table["local (all cpus)"]["seconds"] - 1, 3)}
        print(json.dumps(summary, indent=2))
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
        return 0
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
