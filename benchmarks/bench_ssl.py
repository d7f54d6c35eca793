"""The paper's experiment in miniature: labelled-only vs pseudo labels vs SSL rounds vs fully supervised.

One generated CARE-like dataset (3 labelled + >= 12 unlabelled training cases, >= 6 held-out test
cases), one nnU-Net schedule for every arm, scored on the held-out split with the challenge
metrics (Dice, HD95):

* labelled-only: nnU-Net on the 3 labelled cases (``engine = none``);
* round 0: the atlas pseudo labeller applied to the held-out cases;
* SSL round k: the loop's nnU-Net after round k (the last one is the deployed model);
* fully supervised: nnU-Net on every training case with its true mask.

Every arm goes through ``sslmedsam2 train``'s library entry point (``run_ssl``) with its own run
folder, so a rerun resumes instead of starting over. Writes the table to stdout and the figures
to ``--json`` (default benchmarks/raw/ssl_miniature.json).

    python benchmarks/bench_ssl.py --work runs/bench-ssl [--unlabelled 12] [--test 6] [--profile cpu-quick]
                                   [--epochs N] [--ignore BITS] [--variability V]
                                   [--labelled-vendors A] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from sslmedsam2.datasets.example import ExampleConfig, make_example
from sslmedsam2.ssl.config import build_config
from sslmedsam2.ssl.pipeline import run_ssl


def fully_labelled_copy(train: Path, truth: Path, target: Path, sequence: str) -> Path:
    """The training folder with every case's true ``mask_<SEQ>`` beside its image."""
    if not target.is_dir():
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(train, staging)
        for mask in truth.glob(f"*/*/mask_{sequence}.nii.gz"):
            shutil.copyfile(mask, staging / mask.parent.parent.name / mask.parent.name / mask.name)
        staging.rename(target)
    return target


def fewer_labels_copy(train: Path, target: Path, vendors: tuple[str, ...], sequence: str) -> Path:
    """The training folder with the masks of the other vendors' cases removed: those cases join
    the unlabelled ones (few labels, from some scanners only)."""
    if not target.is_dir():
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(train, staging)
        for mask in staging.glob(f"*/*/mask_{sequence}.nii.gz"):
            if mask.parent.parent.name.removeprefix("Vendor_") not in vendors:
                mask.unlink()
        staging.rename(target)
    return target


def arm(name: str, train: Path, engine: str, args: argparse.Namespace, data_root: Path,
        max_rounds: int) -> tuple[list, float]:
    """Run (or resume) one arm; its step records and its seconds (summed over the steps' own
    records, so that resuming a finished arm does not report 0)."""
    schedule = {"profile": args.profile, "folds": ["all"],
                **({"epochs": args.epochs} if args.epochs else {})}
    raw = {
        "data": {"train": str(train), "sequences": ["GED4"],
                 "holdout_images": str(data_root / "test" / "input"),
                 "holdout_labels": str(data_root / "ground_truth" / "test")},
        # one labelled case per vendor: the atlas fuses all three supports for every query
        # and round 0 from the atlas alone, as the figures were recorded (no labelled-only partner)
        "pseudo_labels": {"engine": engine, "same_vendor_supports": False, "fuse_labelled_only": False,
                          **({"ignore_uncertainty_above": args.ignore} if args.ignore else {})},
        "intermediate": schedule,
        "final": schedule,
        # the model alone, as its figures have always been (no atlas average served or scored)
        "loop": {"max_rounds": max_rounds, "convergence_dice": args.convergence, "seed": args.seed,
                 "serve_average": False},
    }
    result = run_ssl(build_config(raw, Path.cwd()), args.work / name, progress=False)
    return result.records, sum(r.seconds for r in result.records)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-ssl"))
    parser.add_argument("--unlabelled", type=int, default=12)
    parser.add_argument("--test", type=int, default=6)
    parser.add_argument("--profile", default="cpu-quick")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per training, every arm (default: the profile's)")
    parser.add_argument("--ignore", type=float, default=None,
                        help="uncertainty (bits) above which pseudo-label voxels are ignored "
                             "(default: off, as in the paper)")
    parser.add_argument("--variability", type=float, default=1.0,
                        help="make-example's anatomy spread (new --work folders only)")
    parser.add_argument("--labelled-vendors", type=lambda t: tuple(t.split(",")), default=None,
                        help="keep the labels of these vendors only, e.g. A (default: all three)")
    parser.add_argument("--max-rounds", type=int, default=3)
    parser.add_argument("--convergence", type=float, default=0.98)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/raw/ssl_miniature.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    data_root = args.work / "data"
    if not (data_root / "example.json").is_file():
        make_example(ExampleConfig(out_dir=data_root, cases=args.unlabelled + 3,
                                   test_cases=args.test, labelled_per_vendor=1, seed=args.seed,
                                   variability=args.variability),
                     progress=False)
    full = fully_labelled_copy(data_root / "train", data_root / "ground_truth" / "train",
                               args.work / "train_fully_labelled", "GED4")
    train, suffix = data_root / "train", ""
    if args.labelled_vendors:  # its own arms, beside the all-vendor ones of the same --work
        suffix = f"_labelled_{'_'.join(args.labelled_vendors)}"
        train = fewer_labels_copy(train, args.work / f"train{suffix}", args.labelled_vendors, "GED4")
    labelled_only, t_lab = arm(f"labelled_only{suffix}", train, "none", args, data_root, 0)
    # The two reference arms first: if 3 labels already match all of them, the SSL arm can show nothing.
    fully, t_full = arm("fully_supervised", full, "none", args, data_root, 0)
    ssl, t_ssl = arm(f"ssl{suffix}", train, "atlas", args, data_root, args.max_rounds)

    rows = [(f"labelled-only nnU-Net ({labelled_only[-1].labelled} cases)", labelled_only[-1], t_lab)]
    rows += [(f"SSL {r.step.replace('_', ' ')}" + (" (atlas pseudo labels)" if r.step == "round_00"
              else ""), r, None) for r in ssl]
    rows += [(f"fully supervised nnU-Net ({fully[-1].labelled} cases)", fully[-1], t_full)]
    print(f"\nprofile {args.profile}, folds all; held-out GED4 cases: {ssl[0].holdout_cases}\n")
    print("| arm | train cases (labelled+pseudo) | change Dice | held-out Dice | held-out HD95 mm | s |")
    print("|---|---|---|---|---|---|")
    for label, r, seconds in rows:
        change = "-" if r.change_dice_mean is None else f"{r.change_dice_mean:.4f}"
        print(f"| {label} | {r.labelled}+{r.pseudo_kept} | {change} | {r.holdout_dice_mean:.4f} | "
              f"{r.holdout_hd95_mean:.1f} | {r.seconds if seconds is None else seconds:.0f} |")
    final, lab, sup = ssl[-1].holdout_dice_mean, labelled_only[-1].holdout_dice_mean, fully[-1].holdout_dice_mean
    figures = {
        "labelled_only_dice": lab, "ssl_final_dice": final, "fully_supervised_dice": sup,
        "labelled_only_hd95": labelled_only[-1].holdout_hd95_mean,
        "ssl_final_hd95": ssl[-1].holdout_hd95_mean, "fully_supervised_hd95": fully[-1].holdout_hd95_mean,
        "ssl_beats_labelled_only": final > lab, "ssl_fraction_of_fully_supervised": round(final / sup, 4),
        "rounds": [{"step": r.step, "engine": r.engine, "labelled": r.labelled,
                    "pseudo_kept": r.pseudo_kept, "change_dice_mean": r.change_dice_mean,
                    "holdout_dice_mean": r.holdout_dice_mean, "holdout_hd95_mean": r.holdout_hd95_mean,
                    "seconds": r.seconds} for r in ssl],
        "settings": {"profile": args.profile, "epochs": args.epochs, "ignore": args.ignore,
                     "variability": args.variability, "folds": ["all"], "labelled": labelled_only[-1].labelled,
                     "labelled_vendors": list(args.labelled_vendors or ("A", "B1", "B2")),
                     "unlabelled": args.unlabelled, "held_out": args.test, "seed": args.seed,
                     "max_rounds": args.max_rounds, "convergence_dice": args.convergence},
        "seconds": {"labelled_only": round(t_lab), "ssl": round(t_ssl), "fully_supervised": round(t_full),
                    "this_invocation": round(time.perf_counter() - started)},
    }
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nSSL final / fully supervised Dice: {final / sup:.4f} (target >= 0.97); "
          f"SSL beats labelled-only: {final > lab} ({final:.4f} vs {lab:.4f}); figures in {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
