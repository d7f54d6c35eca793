"""What `sslmedsam2 reproduce` expects a full CARE-LiSeg run of the paper's protocol to cost.

The estimate `reproduce` prints before it starts, for the challenge's sizes (360 training cases of
which 30 labelled, 60 validation cases; GED4 and T1) without the data at hand, on one GPU of the
kind the figures were measured on (benchmarks/RESULTS.md, "GPU figures").

    python benchmarks/estimate_care.py [--config configs/care2025_paper.toml] [--rounds N]
        [--gpus 1 2 4 8]

With ``--gpus``, also the wall time with the cases and folds spread over N GPUs (``--executor
ray``, one case or fold per GPU; sequences one after the other), from the same figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sslmedsam2.datasets.care_check import RootReport
from sslmedsam2.ssl.config import load_config
from sslmedsam2.ssl.reproduce import GPU_COSTS, estimate, steps_table

REPO = Path(__file__).resolve().parents[1]
#: CARE 2025 LiSeg (../shared/docs/formats.md): training cases per vendor, 10 labelled each.
TRAIN = {"A": 130, "B1": 170, "B2": 60}
VALIDATION = 60


def care_reports() -> tuple[RootReport, RootReport]:
    train = RootReport(Path("CARE/LiSeg/train"), "training")
    for vendor, count in TRAIN.items():
        for number in range(count):
            case = f"{number:04d}-{vendor}"
            train.vendors[case] = vendor
            if number < 10:
                train.labelled.append(case)
    val = RootReport(Path("CARE/LiSeg/val"), "validation",
                     vendors={f"{n:04d}-V": "?" for n in range(VALIDATION)})
    return train, val


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "care2025_paper.toml")
    parser.add_argument("--rounds", type=int, default=None, help="override [loop] max_rounds")
    parser.add_argument("--gpus", type=int, nargs="*", default=[],
                        help="also estimate the run on these numbers of GPUs (Ray executor)")
    args = parser.parse_args()
    overrides = {"data.train": "CARE/LiSeg/train", "pseudo_labels.checkpoint": "MedSAM2_latest.pt"}
    if args.rounds is not None:
        overrides["loop.max_rounds"] = args.rounds
    config = load_config(args.config, overrides)
    train, val = care_reports()
    steps = estimate(config, train, val, GPU_COSTS)
    print(f"{len(train.vendors)} training cases ({len(train.labelled)} labelled), {VALIDATION} "
          f"validation cases, sequences {', '.join(config.data.sequences)}, up to "
          f"{config.loop.max_rounds} rounds; from {GPU_COSTS.source}, one GPU:")
    print(steps_table(steps))
    if args.gpus:
        print(scaled_table(config, train, val, args.gpus))
    return 0


def scaled_table(config, train: RootReport, val: RootReport, gpus: list[int]) -> str:
    """Markdown: each step's hours on N GPUs, and the total."""
    runs = {n: estimate(config, train, val, GPU_COSTS, workers=n) for n in gpus}
    names = [step.name for step in runs[gpus[0]]]
    lines = ["| step | " + " | ".join(f"{n} GPU{'s' if n > 1 else ''}" for n in gpus) + " |",
             "|---|" + "---|" * len(gpus)]
    for index, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(f"{runs[n][index].estimate_s / 3600:.1f} h"
                                                for n in gpus) + " |")
    lines.append("| **total** | " + " | ".join(
        f"**{sum(s.estimate_s for s in runs[n]) / 3600:.1f} h**" for n in gpus) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
