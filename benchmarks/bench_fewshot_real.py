"""Few-shot (atlas) quality on real patients, leave-one-out, every registration method side by side.

Each patient of a labelled collection (default: the 14 CHAOS MR T2-SPIR patients in
../shared/data/chaos-mr-t2, CC BY-NC-SA: read in place, never copied) is a query; its supports are
drawn from the other patients with a fixed seed per query, the first k of one permutation, so the
1-support draw is part of the 3-support draw. Each support is registered once per method and the
k-support labels fuse the first k warped masks exactly as the engine can: the plain vote
(``fuse``), the vote weighted by local image likeness (``fuse_weighted``, 2 or more supports;
the engine's default), each alone and refined by the query's intensities (``refine``), side by
side. With --draws N, each query is scored on N seeded draws (seeds seed .. seed+N-1), sharing
the cached registrations: one draw of one support per query is too few to tell an engine from its
luck (on CHAOS, seed 0's single supports sit in the top 3% of random draws).

Printed per method and k: whole-volume 3D Dice (mean +- sd, min), the few-shot literature's
"protocol Dice" (3D Dice over the slices that hold liver in the ground truth), HD95, and seconds
per query (the sum of its supports' registrations and the fusion, measured here, side by side).
Resumable: each (query, support, method) warp (mask and image) is kept in --work. ANTs runs on
one thread per process, as the container serves, so a rerun repeats every warp bit for bit; with
--jobs N, N processes register the missing pairs side by side first (seconds per query are then
those of one thread sharing the machine). With --montages DIR, one overlay picture per query: the
manual mask beside the first method's default label for each support count.

    python benchmarks/bench_fewshot_real.py [--data DIR] [--methods syn-similarity affine] [--supports 1 3]
        [--seed 0] [--draws 1] [--jobs 1] [--work runs/bench_fewshot_real]
        [--json benchmarks/raw/fewshot_real.json] [--montages DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from sslmedsam2.datasets import read_collection, require_clean
from sslmedsam2.evaluation.metrics import compute_metrics
from sslmedsam2.evaluation.montage import save_overlay_montage
from sslmedsam2.registration.intensity_refinement import IntensityRefinement
from sslmedsam2.registration.label_propagation import (
    AtlasConfig,
    FusedLabel,
    WarpedSupport,
    fuse,
    fuse_weighted,
    refine,
    warp_supports,
)
from sslmedsam2.registration.local_weighting import LocalWeighting
from sslmedsam2.registration.syn import SynConfig, pin_registration_threads
from sslmedsam2.supports import Support

#: the methods compared: SyN from ANTs' affine (the engine's default before attempt 5), SyN from a
#: similarity map (one scale for every axis; today's default), ANTs' quick SyN schedule, SimpleITK's
#: affine
METHODS = {"syn": AtlasConfig(method="syn", syn=SynConfig(start="affine")),
           "syn-similarity": AtlasConfig(method="syn", syn=SynConfig(start="similarity")),
           "syn-quick": AtlasConfig(method="syn", syn=SynConfig.quick()),
           "affine": AtlasConfig(method="affine")}
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chaos-mr-t2"
#: Published 1-shot protocol Dice on the 20 CHAOS T2-SPIR patients (2D, setting 1 / setting 2).
PUBLISHED = {"FoB+SAM": (85.6, 82.4), "GMRD": (81.4, 80.3), "SSL-ALPNet": (76.1, 73.1)}
#: the engine's fusion with one support and with several (shown in the montages)
DEFAULT_FUSION = ("vote+intensity", "weighted+intensity")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="a labelled collection, read in place (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=["syn-similarity", "affine"],
                        choices=list(METHODS),
                        help="registration methods, side by side (default: %(default)s): syn-similarity "
                             "is the engine's default, syn its earlier affine start, affine the fast engine")
    parser.add_argument("--supports", type=int, nargs="+", default=[1, 3],
                        help="support counts scored per query; each draw extends the smaller one "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first support draw")
    parser.add_argument("--draws", type=int, default=1,
                        help="support draws per query, seeds seed .. seed+N-1; the table adds the spread "
                             "of the draws' means (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=None, help="first N patients only")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes that register the missing pairs side by side, one ANTs thread "
                             "each (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_fewshot_real"),
                        help="cache of warped supports (delete it to time every registration afresh)")
    parser.add_argument("--json", type=Path, default=None, help="write raw figures here")
    parser.add_argument("--montages", type=Path, default=None,
                        help="write one overlay PNG per query here: manual mask and the default labels")
    args = parser.parse_args()
    if not pin_registration_threads():
        raise SystemExit("ANTs was loaded before its threads could be pinned")
    patients = require_clean(read_collection(args.data, "MR")).labelled
    if max(args.supports) >= len(patients) or min(args.supports) < 1 or args.draws < 1:
        parser.error(f"--supports must lie in 1..{len(patients) - 1} and --draws be at least 1")
    queries = patients[: args.queries] if args.queries else patients
    draws = [{q.case: support_draw(q, patients, max(args.supports), args.seed + d) for q in queries}
             for d in range(args.draws)]
    if args.jobs > 1:
        register_missing(queries, draws, args)
    rows = []
    for query in tqdm(queries, desc="queries", unit="patient"):
        rows += score_query(query, [draw[query.case] for draw in draws], args)
    print_tables(rows, args)
    if args.json:
        args.json.write_text(json.dumps({
            "command": "python benchmarks/bench_fewshot_real.py " + " ".join(
                f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items() if k not in ("json", "work", "montages") and v is not None),
            "data": str(args.data), "machine": f"{platform.node()} {platform.processor()}",
            "draws": [{q: [s.case for s in d] for q, d in draw.items()} for draw in draws],
            "rows": rows}, indent=1))
    return 0


def support_draw(query: Support, patients: list[Support], k: int, seed: int) -> list[Support]:
    """The first k of a seeded permutation of the other patients (one seed per query)."""
    others = [p for p in patients if p.case != query.case]
    rng = np.random.default_rng([seed, patients.index(query)])
    return [others[i] for i in rng.permutation(len(others))[:k]]


def register_missing(queries: list[Support], draws: list[dict[str, list[Support]]],
                     args: argparse.Namespace) -> None:
    """Fill the warp cache with ``args.jobs`` processes (each pinned to one ANTs thread, as this one)."""
    pairs = sorted({(q, s, m) for q in queries for draw in draws for s in draw[q.case] for m in args.methods},
                   key=lambda pair: (pair[0].case, pair[1].case, pair[2]))
    missing = [pair for pair in pairs if not _cache_paths(*pair, args.work)[2].is_file()]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        jobs = pool.imap_unordered(_register_pair, [(q, s, m, args.work) for q, s, m in missing])
        for _ in tqdm(jobs, total=len(missing), desc="registrations", unit="pair"):
            pass


def _register_pair(job: tuple[Support, Support, str, Path]) -> None:
    query, support, method, work = job
    cached_warp(query, support, sitk.ReadImage(str(query.image)), method, work)


def score_query(query: Support, draws: list[list[Support]], args: argparse.Namespace) -> list[dict]:
    """Every method, support count and fusion on each draw; a support set that recurs (say all
    the other patients, in every draw) is fused and scored once."""
    image = sitk.ReadImage(str(query.image))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(query.mask))) > 0
    rows, labels, scored = [], {"manual": truth}, {}
    for method in args.methods:
        loaded: dict[str, tuple[WarpedSupport, float]] = {}  # each support read once, whatever the draws
        for index, draw in enumerate(draws):
            for support in draw:
                if support.case not in loaded:
                    loaded[support.case] = cached_warp(query, support, image, method, args.work)
            warped = [loaded[s.case][0] for s in draw]
            seconds = [loaded[s.case][1] for s in draw]
            for k in args.supports:
                key = (method, k, frozenset(s.case for s in draw[:k]))
                if key not in scored:
                    scored[key] = {}
                    fused = scored_fusions(warped[:k], image, truth, sum(seconds[:k]))
                    for fusion, (row, mask) in fused.items():
                        scored[key][fusion] = row  # masks are kept only for the montage, of draw 0
                        if index == 0 and method == args.methods[0] and fusion == DEFAULT_FUSION[k > 1]:
                            labels[f"{method}, {k} support{'s' * (k > 1)}"] = mask
                rows += [{"query": query.case, "method": method, "fusion": fusion, "k": k, "draw": index,
                          "supports": [s.case for s in draw[:k]], **row}
                         for fusion, row in scored[key].items()]
    if args.montages:
        args.montages.mkdir(parents=True, exist_ok=True)
        save_overlay_montage(image, labels, args.montages / f"{query.case}.png", title=query.case)
    return rows


def scored_fusions(warped: list[WarpedSupport], image: sitk.Image, truth: np.ndarray,
                   registration_seconds: float) -> dict[str, tuple[dict, np.ndarray]]:
    """Each fusion's figures against ``truth``, with its mask (for the montages)."""
    scored = {}
    for fusion, (label, took) in fusions(warped, image).items():
        scores = compute_metrics(label.mask, truth, image.GetSpacing()[::-1])
        scored[fusion] = ({"dice": round(scores.dice, 4),
                           "protocol_dice": round(protocol_dice(label.mask, truth), 4),
                           "hd95_mm": round(scores.hd95, 2),
                           "seconds": round(registration_seconds + took, 1)}, label.mask)
    return scored


def fusions(warped: list[WarpedSupport], image: sitk.Image) -> dict[str, tuple[FusedLabel, float]]:
    """The plain vote and (2 or more supports) the locally weighted vote, each also refined by
    intensity, with the seconds each took after registration."""
    rows = {}
    votes = {"vote": lambda: fuse([w.mask for w in warped])}
    if len(warped) > 1:
        votes["weighted"] = lambda: fuse_weighted(warped, image, LocalWeighting())
    for name, vote in votes.items():
        started = time.perf_counter()
        label = vote()
        voted = time.perf_counter()
        rows[name] = (label, voted - started)
        rows[f"{name}+intensity"] = (refine(label, image, IntensityRefinement()),
                                     time.perf_counter() - started)
    return rows


def cached_warp(query: Support, support: Support, image: sitk.Image, method: str,
                work: Path) -> tuple[WarpedSupport, float]:
    """One support's warped soft mask and image, and its registration time, computed once."""
    mask_path, image_path, meta = _cache_paths(query, support, method, work)
    if mask_path.is_file() and image_path.is_file() and meta.is_file():
        return (WarpedSupport(np.load(mask_path).astype(np.float32), np.load(image_path).astype(np.float32)),
                json.loads(meta.read_text())["seconds"])
    pair = (sitk.ReadImage(str(support.image)), sitk.ReadImage(str(support.mask)))
    started = time.perf_counter()
    (warped,) = warp_supports(image, [pair], METHODS[method])
    seconds = time.perf_counter() - started
    if warped is None:  # registration failed: the support votes for nothing and looks like nothing
        empty = np.zeros(image.GetSize()[::-1], np.float32)
        warped = WarpedSupport(empty, empty)
    meta.parent.mkdir(parents=True, exist_ok=True)
    np.save(mask_path, warped.mask.astype(np.float16))
    np.save(image_path, warped.image.astype(np.float16))
    meta.write_text(json.dumps({"seconds": round(seconds, 2)}))
    return warped, seconds


def _cache_paths(query: Support, support: Support, method: str, work: Path) -> tuple[Path, Path, Path]:
    """Where one warp's mask, image and timing lie; the timing is written last, so it marks a
    complete entry."""
    folder = work / method / query.case
    return (folder / f"{support.case}_mask.npy", folder / f"{support.case}_image.npy",
            folder / f"{support.case}.json")


def protocol_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice over the axial slices that hold liver in the ground truth (z first)."""
    slices = truth.any(axis=(1, 2))
    a, b = prediction[slices] > 0, truth[slices]
    return 2.0 * float(np.logical_and(a, b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def print_tables(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\n{args.data}: {len({r['query'] for r in rows})} queries, leave-one-out, "
          f"{args.draws} draw(s) from seed {args.seed}\n")
    print("| method | fusion | supports | 3D Dice mean +- sd | min | the draws' means: sd (range) | "
          "protocol Dice mean +- sd | HD95 mm | s per query |\n|---|---|---|---|---|---|---|---|---|")
    for method, fusion, k in sorted({(r["method"], r["fusion"], r["k"]) for r in rows},
                                    key=lambda key: (args.methods.index(key[0]), key[1], key[2])):
        sel = [r for r in rows if (r["method"], r["fusion"], r["k"]) == (method, fusion, k)]
        dice, proto = [r["dice"] for r in sel], [r["protocol_dice"] for r in sel]
        print(f"| {method} | {fusion} | {k} | {_ms(dice)} | {min(dice):.3f} | {_spread(sel)} | "
              f"{_ms(proto)} | "
              f"{statistics.mean(r['hd95_mm'] for r in sel):.1f} | "
              f"{statistics.mean(r['seconds'] for r in sel):.1f} |")
    print("\npublished 1-shot protocol Dice, 20 patients, 2D (setting 1 / 2): " + "; ".join(
        f"{name} {a} / {b}" for name, (a, b) in PUBLISHED.items()))


def _spread(rows: list[dict]) -> str:
    """How far the mean Dice moves from one support draw to another."""
    means = [statistics.mean(r["dice"] for r in rows if r["draw"] == d)
             for d in sorted({r["draw"] for r in rows})]
    if len(means) < 2:
        return "-"
    return f"{statistics.stdev(means):.3f} ({min(means):.3f}-{max(means):.3f})"


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {sd:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
