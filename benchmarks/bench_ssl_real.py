"""The semi-supervised loop on real patients: labelled-only vs few-shot round 0 vs SSL rounds vs
fully supervised, cross-validated over a labelled collection.

Default collection: the 14 CHAOS MR T2-SPIR patients in ../shared/data/chaos-mr-t2 (CC BY-NC-SA:
read in place; the fold folders hold symbolic links, never copies). The patients are split into
``--folds`` folds (seeded); in each fold the held-out patients are never trained on. The others form
the training part, of which the first 1 (and 3) of a seeded permutation keep their masks and the
rest are unlabelled. Arms per fold, all with the same nnU-Net schedule, through ``run_ssl`` (the
library entry point of ``sslmedsam2 train``), each in its own resumable run folder:

* labelled-only: nnU-Net on the L labelled patients (``engine = none``);
* SSL: few-shot round 0 (the atlas alone on the L supports, ``fuse_labelled_only = false``),
  each nnU-Net round, the final model; with --fuse ("SSL fused"), round 0 is the agreement of
  the atlas and the labelled-only arm's nnU-Net (copied in, not retrained), and training ignores
  where they disagree; with --fuse average ("SSL fused-average"), round 0 is the two averaged as
  an SSL run serves its model (--fuse average-atlas, the library's default round 0: the atlas's
  organ alone where the two part ways, not the model's); with
  --warm-start ("... warm"), each round's nnU-Net starts from the model before it (round 1: the
  labelled-only partner) instead of from scratch; with --labelled-share S ("... share S"), the
  labelled patients are repeated to make about S of each SSL training set; with
  --ignore-uncertainty-above B ("... ignore B"), pseudo-label voxels whose uncertainty exceeds B
  bits are nnU-Net's ignore label;
* fully supervised: nnU-Net on every training patient with its true mask.

Each arm's exported weights are also scored as ``process.py`` serves them (step "served": the
model averaged with the atlas on the arm's labelled patients, ``loop.serve_average``).

Prints mean +- sd over folds of held-out Dice and HD95 per arm and writes the raw figures to
--json. Run it again with the same --work to resume.

    python benchmarks/bench_ssl_real.py [--data DIR] [--folds 3] [--labels 1 3] [--only-folds 0]
        [--profile cpu-quick] [--epochs N] [--max-rounds 2] [--choose-export] [--fuse]
        [--warm-start] [--labelled-share S] [--ignore-uncertainty-above B] [--vote-only]
        [--skip-fully-supervised] [--skip-labelled-only] [--skip-ssl]
        [--work runs/bench_ssl_real] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from sslmedsam2.datasets import read_collection, require_clean
from sslmedsam2.ssl.config import build_config
from sslmedsam2.ssl.loop import SERVED, StepRecord
from sslmedsam2.ssl.pipeline import run_ssl
from sslmedsam2.supports import Support

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chaos-mr-t2"
SEQUENCE = "T2SPIR"
#: --fuse: round 0 is the agreement of the atlas and a labelled-only nnU-Net; training ignores
#: the voxels where they differ (1 bit) and the atlas's own 50/50 boundary. --fuse average: their
#: mean probability (the engine an SSL run serves), nothing ignored; --fuse average-atlas: the
#: same, the atlas's organ alone where the two part ways
FUSED = {"agreement": {"fuse_labelled_only": True, "fusion": "agreement",
                       "ignore_uncertainty_above": 0.95},
         "average": {"fuse_labelled_only": True, "fusion": "average"},
         "average-atlas": {"fuse_labelled_only": True, "fusion": "average-atlas"}}
log = logging.getLogger("bench_ssl_real")


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    patients = require_clean(read_collection(args.data, SEQUENCE)).labelled
    folds = split_folds(patients, args.folds, args.seed)
    results = []
    for index in args.only_folds if args.only_folds is not None else range(args.folds):
        results += run_fold(index, folds[index], patients, args)
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v
                                                      for k, v in vars(args).items()},
                                         "folds": {i: [p.case for p in f] for i, f in enumerate(folds)},
                                         "results": results}, indent=1) + "\n")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="a labelled collection, read in place (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=3, help="cross-validation folds (seeded split)")
    parser.add_argument("--only-folds", type=int, nargs="+", default=None,
                        help="run these fold indices only (0-based), e.g. to split the work over sessions")
    parser.add_argument("--labels", type=int, nargs="*", default=[1, 3],
                        help="labelled patients in each fold's training part (default: %(default)s); "
                             "given with no value, only the fully supervised arm runs")
    parser.add_argument("--profile", default="cpu-quick",
                        help="nnU-Net training profile of every arm (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the profile's epochs (12 iterations each on cpu-quick)")
    parser.add_argument("--max-rounds", type=int, default=2, help="SSL rounds after round 0")
    parser.add_argument("--atlas-method", default="syn",
                        help="round 0's registration: syn (default) or affine")
    parser.add_argument("--atlas-syn-start", default="similarity", choices=["similarity", "affine"],
                        help="the linear map SyN starts from (attempts 1-6 used affine)")
    parser.add_argument("--atlas-head-foot-search-mm", type=float, default=150.0,
                        help="from the similarity map, how far the support's liver may slide head-foot "
                             "(0: off, as every SSL attempt recorded before few-shot attempt 8)")
    parser.add_argument("--vote-only", action="store_true",
                        help="round 0's atlas as a plain vote: no local weighting, no intensity "
                             "correction (as before they existed; folds 0 and 1 of the fused "
                             "results used this)")
    parser.add_argument("--choose-export", action="store_true",
                        help="let SSL arms run the loop's export choice (4 more trainings per arm "
                             "with >= 2 labels); off, an SSL arm's final row is the SSL model itself")
    parser.add_argument("--fuse", nargs="?", const="agreement", choices=sorted(FUSED), default=None,
                        help="SSL arms (named 'SSL fused', own run folders) start from the agreement "
                             "of the atlas and a labelled-only nnU-Net ('--fuse average': from their "
                             "average, 'SSL fused-average'; '--fuse average-atlas': the same with the "
                             "atlas alone where the two part ways: the library's default round "
                             "0); the other arms are shared")
    parser.add_argument("--warm-start", action="store_true",
                        help="SSL arms (named '... warm', own run folders) start each round from "
                             "the model before it (loop.warm_start; round 1 from the labelled-only "
                             "partner with --fuse)")
    parser.add_argument("--labelled-share", type=float, default=0.0,
                        help="SSL arms (named '... share S', own run folders) repeat the labelled "
                             "patients to make about this share of each training set "
                             "(pseudo_labels.labelled_share; default here 0, each once: the plain "
                             "loop of attempts 1-8, whose run folders and JSON keep their names; "
                             "the loop's own default is 0.5)")
    parser.add_argument("--ignore-uncertainty-above", type=float, default=None, metavar="BITS",
                        help="SSL arms (named '... ignore B', own run folders) do not train on "
                             "pseudo-label voxels more uncertain than this (binary entropy, bits: "
                             "pseudo_labels.ignore_uncertainty_above); default: every voxel")
    parser.add_argument("--skip-fully-supervised", action="store_true",
                        help="leave the fully supervised arm out (e.g. already measured: its "
                             "training is seeded and gives the same model again)")
    parser.add_argument("--skip-ssl", action="store_true",
                        help="labelled-only (and fully supervised) arms only, e.g. a longer "
                             "labelled-only schedule as a control, in its own --work")
    parser.add_argument("--skip-labelled-only", action="store_true",
                        help="leave the labelled-only arms out, e.g. already measured with the same "
                             "schedule in another --work (with --fuse, round 0 then trains its own "
                             "labelled-only partner)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold split and label draw")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_ssl_real"),
                        help="run folders, one per fold and arm; the same --work resumes")
    parser.add_argument("--json", type=Path, default=None, help="write raw figures here")
    args = parser.parse_args()
    if not args.labels and args.skip_fully_supervised:
        parser.error("--labels with no value runs only the fully supervised arm, which "
                     "--skip-fully-supervised leaves out: nothing to run")
    return args


def split_folds(patients: list[Support], folds: int, seed: int) -> list[list[Support]]:
    order = np.random.default_rng(seed).permutation(len(patients))
    return [[patients[i] for i in part] for part in np.array_split(order, folds)]


def run_fold(index: int, held_out: list[Support], patients: list[Support],
             args: argparse.Namespace) -> list[dict]:
    """Every arm of one fold; one result row per arm and step."""
    root = args.work / f"fold{index}"
    training = [p for p in patients if p not in held_out]
    order = np.random.default_rng([args.seed, index]).permutation(len(training))
    holdout = link_collection(root / "holdout", held_out, labelled=held_out)
    rows = [] if args.skip_fully_supervised else arm_rows(
        index, "fully supervised", len(training), root / "fully_supervised",
        link_collection(root / "train_full", training, labelled=training), holdout, "none", args)
    for count in args.labels:
        labelled = [training[i] for i in order[:count]]
        train = link_collection(root / f"train_L{count}", training, labelled)
        if not args.skip_labelled_only:
            rows += arm_rows(index, "labelled-only", count, root / f"labelled_only_L{count}", train,
                             holdout, "none", args)
        if args.skip_ssl:
            continue
        name, folder = ssl_arm_name(count, args)
        if args.fuse:
            reuse_labelled_only(root / f"labelled_only_L{count}", root / folder)
        rows += arm_rows(index, name, count, root / folder, train, holdout, "atlas", args)
    return rows


def ssl_arm_name(count: int, args: argparse.Namespace) -> tuple[str, str]:
    """The SSL arm's table name and run folder, which differ by variant."""
    name, folder = {None: ("SSL", f"ssl_L{count}"), "agreement": ("SSL fused", f"ssl_fused_L{count}"),
                    "average": ("SSL fused-average", f"ssl_fusedavg_L{count}"),
                    "average-atlas": ("SSL fused-average-atlas", f"ssl_fusedavgatlas_L{count}")}[args.fuse]
    if args.warm_start:
        name, folder = f"{name} warm", folder.replace("_L", "_warm_L")
    if args.labelled_share:
        name, folder = f"{name} share {args.labelled_share:g}", folder.replace(
            "_L", f"_share{args.labelled_share:g}_L")
    if args.ignore_uncertainty_above is not None:
        bits = args.ignore_uncertainty_above
        name, folder = f"{name} ignore {bits:g}", folder.replace("_L", f"_ign{bits:g}_L")
    return name, folder


def reuse_labelled_only(source: Path, target: Path) -> None:
    """A fused arm's round-0 partner is nnU-Net on the same labelled patients with the same
    schedule as the labelled-only arm: that arm's finished model is copied in (the loop resumes
    from it) instead of being trained a second time."""
    model = source / SEQUENCE / "final" / "nnunet"
    partner = target / SEQUENCE / "round_00" / "labelled_only" / "nnunet"
    if partner.exists() or not (model / ".sslmedsam2-done-plan").is_file():
        return
    shutil.copytree(model, partner, symlinks=True)
    log.info("%s: round 0's labelled-only nnU-Net copied from %s", target, source)


def link_collection(folder: Path, cases: list[Support], labelled: list[Support]) -> Path:
    """A flat collection of symbolic links: every case's image, the masks of ``labelled``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {s.case for s in labelled}
    for case in cases:
        for source, tag, wanted in ((case.image, "image", True), (case.mask, "liver", case.case in names)):
            link = folder / f"{case.case}_{tag}.nii.gz"
            if wanted and not link.is_symlink():
                link.symlink_to(source.resolve())
    return folder


def arm(run_dir: Path, train: Path, holdout: Path, engine: str,
        args: argparse.Namespace) -> list[StepRecord]:
    schedule = {"profile": args.profile, "folds": ["all"],
                **({"epochs": args.epochs} if args.epochs else {})}
    raw = {"data": {"train": str(train), "sequences": [SEQUENCE], "holdout_images": str(holdout)},
           "pseudo_labels": {"engine": engine, "atlas_method": args.atlas_method,
                             "atlas_syn_start": args.atlas_syn_start,
                             "atlas_head_foot_search_mm": args.atlas_head_foot_search_mm,
                             "atlas_weighting": not args.vote_only,
                             "atlas_intensity": not args.vote_only,
                             **ssl_variant(engine, args)},
           "intermediate": schedule, "final": schedule,
           "loop": {"max_rounds": args.max_rounds if engine != "none" else 0, "seed": args.seed,
                    "device": "cpu", "choose_export": args.choose_export,
                    "warm_start": args.warm_start}}
    started = time.perf_counter()
    records = run_ssl(build_config(raw, Path.cwd()), run_dir, progress=False).records
    log.info("%s: %.0f s this invocation", run_dir, time.perf_counter() - started)
    return records


def ssl_variant(engine: str, args: argparse.Namespace) -> dict:
    """The pseudo-label settings an SSL arm's variant sets. Without --fuse the atlas alone makes
    round 0, as the arms were recorded before fusing became the library's default (``--fuse
    average-atlas`` is that default); labelled-only arms, which have no round 0, record the same
    and so resume the run folders made before."""
    no_fusion = {"fuse_labelled_only": False, "fusion": "agreement"}  # the defaults before
    if engine == "none":
        return no_fusion
    fused = FUSED[args.fuse] if args.fuse else no_fusion
    settings = {**fused, "labelled_share": args.labelled_share}
    if args.ignore_uncertainty_above is not None:
        settings["ignore_uncertainty_above"] = args.ignore_uncertainty_above
    return settings


def arm_rows(fold: int, arm_name: str, labels: int, run_dir: Path, train: Path, holdout: Path,
             engine: str, args: argparse.Namespace) -> list[dict]:
    return [result_row(fold, arm_name, labels, record, run_dir)
            for record in arm(run_dir, train, holdout, engine, args)]


def result_row(fold: int, arm_name: str, labels: int, record: StepRecord, run_dir: Path) -> dict:
    step = record.step if arm_name.startswith("SSL") or record.step == SERVED else "final"
    return {"fold": fold, "arm": arm_name, "labels": labels, "step": step,
            "based_on": record.based_on, "train": f"{record.labelled}+{record.pseudo_kept}",
            "dice": record.holdout_dice_mean, "hd95_mm": record.holdout_hd95_mean,
            "held_out": record.holdout_cases, "seconds": record.seconds,
            "per_patient": per_patient(run_dir / SEQUENCE, record)}


def per_patient(sequence_dir: Path, record: StepRecord) -> dict[str, dict]:
    """Held-out Dice and HD95 per patient of one step (a final model that is a round's model
    was scored in that round's folder)."""
    path = sequence_dir / record.step / "holdout_metrics.json"
    if not path.is_file() and record.based_on:
        path = sequence_dir / record.based_on / "holdout_metrics.json"
    if not path.is_file():
        return {}
    return {row["case"]: {"dice": _round(row["dice"], 4), "hd95_mm": _round(row["hd95"], 1)}
            for row in json.loads(path.read_text())}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    folds = sorted({r["fold"] for r in results})
    print(f"\n{args.data}: folds {folds} of {args.folds}; profile {args.profile}; "
          f"atlas {args.atlas_method}{' (vote only)' if args.vote_only else ''}; "
          "held-out Dice / HD95 mean +- sd over folds\n")
    print("| arm | labels | step | Dice | HD95 mm | folds |\n|---|---|---|---|---|---|")
    keys = sorted({_table_key(r) for r in results},
                  key=lambda k: (k[1] if k[0] != "fully supervised" else 99, k[0], k[2]))
    for key in keys:
        sel = [r for r in results if _table_key(r) == key and r["dice"] is not None]
        print(f"| {key[0]} | {key[1]} | {key[2]} | {_ms([r['dice'] for r in sel], 4)} | "
              f"{_ms([r['hd95_mm'] for r in sel], 1)} | {len(sel)} |")


def _table_key(row: dict) -> tuple:
    """Arm, labelled patients and step; fully supervised labels every training patient, whose
    number differs between folds (9 or 10), so its folds share one row."""
    return (row["arm"], "all" if row["arm"] == "fully supervised" else row["labels"], row["step"])


def _ms(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} +- {sd:.{digits}f}"


if __name__ == "__main__":
    raise SystemExit(main())
