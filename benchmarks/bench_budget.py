"""How well the time budget predicts a case's time: estimate vs measured, per engine and size.

The budget decides before each case from costs timed when the engine loads (nnU-Net: one patch
and a small preprocessing round trip; SAM2: a short few-shot probe). This runs the real engines on
the bundled MR cut to several sizes with no limit that bites, and prints each case's estimate
beside its measured time (nnU-Net also on the MR stretched over a CARE-size 640 x 520 x 64 grid). SAM2 is a randomly initialised MedSAM2-shaped model at 512 px (cost
only, never quality), with the CPU-practical setting on CPU.

    python benchmarks/bench_budget.py --nnunet-weights WEIGHTS [--slices 4 8 16] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from bench_memory import large_volume

from sslmedsam2.engines.base import RuntimeOptions
from sslmedsam2.engines.nnunet import NnUNetEngine
from sslmedsam2.engines.sam2 import Sam2Engine
from sslmedsam2.fewshot.checkpoints import resolve_checkpoint
from sslmedsam2.orientation import reorient
from sslmedsam2.supports import find_supports

SEED = Path(__file__).resolve().parents[1] / "sslmedsam2" / "data" / "abdomen-mr"
NO_LIMIT = 1e9


def liver_block(image: sitk.Image, mask: sitk.Image, count: int) -> tuple[sitk.Image, sitk.Image]:
    """``count`` axial slices centred on the largest liver cross-section."""
    area = sitk.GetArrayViewFromImage(mask).reshape(mask.GetSize()[2], -1).sum(axis=1)
    start = int(np.clip(np.argmax(area) - count // 2, 0, len(area) - count))
    return image[:, :, start : start + count], mask[:, :, start : start + count]


def timed(engine, image: sitk.Image) -> tuple[float, float]:
    """(estimate, measured) seconds of one case; the estimate is the one the plan logged."""
    started = time.perf_counter()
    segmentation = engine.segment(image, "GED4")
    measured = time.perf_counter() - started
    estimate = float(re.search(r"est=(\d+)s", segmentation.detail).group(1))
    return estimate, measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nnunet-weights", type=Path, required=True,
                        help="a weights folder with a GED4 nnU-Net model")
    parser.add_argument("--slices", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--support-slices", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    image = reorient(sitk.ReadImage(str(SEED / "image.nii.gz"))).image
    mask = reorient(sitk.ReadImage(str(SEED / "liver.nii.gz"))).image
    options = RuntimeOptions(device=args.device, time_budget=NO_LIMIT)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        support_dir = Path(scratch) / "Vendor_A" / "0001-A"
        support_dir.mkdir(parents=True)
        for name, volume in zip(("GED4", "mask_GED4"), liver_block(image, mask, args.support_slices)):
            sitk.WriteImage(volume, str(support_dir / f"{name}.nii.gz"))
        engines = {
            "nnunet": NnUNetEngine(args.nnunet_weights, options),
            "sam2": Sam2Engine(find_supports(Path(scratch)),
                               resolve_checkpoint(None, name="medsam2", allow_random=True), options),
        }
        for name, engine in engines.items():
            started = time.perf_counter()
            engine.load("GED4")
            load_s = time.perf_counter() - started
            queries = [(f"{count} slices", liver_block(image, mask, count)[0]) for count in args.slices]
            if name == "nnunet":  # the per-voxel part matters on big grids: one CARE-size volume
                care = large_volume([640, 520, 64], [0.59, 0.59, 3.5], Path(scratch) / "care.mha")
                queries.append(("640x520x64", reorient(sitk.ReadImage(str(care))).image))
            for label, query in queries:
                estimate, measured = timed(engine, query)
                rows.append({"engine": name, "case": label, "load_s": round(load_s, 1),
                             "estimate_s": estimate, "measured_s": round(measured, 1),
                             "ratio": round(measured / max(estimate, 1e-9), 2)})
                print(f"{name:6s} {label:>10s}: estimate {estimate:6.0f} s, measured "
                      f"{measured:6.1f} s (measured/estimate {rows[-1]['ratio']:.2f}); load and "
                      f"probe {load_s:.1f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
