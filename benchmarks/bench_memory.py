"""Peak memory of the container's command on a very large volume (issue 6: a 735 x 512 x 512
volume within 16 GB of RAM, with a 64 MB /dev/shm as small platforms give).

The volume is the bundled example MR resampled onto the requested grid (int16, written as .mha).
``process.py`` runs in a fresh process inside a private mount namespace whose /dev/shm is a tmpfs
of ``--shm`` (unshare; root, or unprivileged user namespaces), and the peak resident memory of
that process (ru_maxrss of the children) is reported with its wall time and summary line.

    python benchmarks/bench_memory.py --weights WEIGHTS [--device cpu|cuda] [--shm 64m]
        [--size 512 512 735] [--spacing 0.7 0.7 1.0] [--json OUT.json] [-- process.py flags]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "sslmedsam2" / "data" / "abdomen-mr" / "image.nii.gz"
MAX_RSS = ("import resource,subprocess,sys; r=subprocess.run(sys.argv[1:]); "
           "print('MAX_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
           "sys.exit(r.returncode)")


def large_volume(size: list[int], spacing: list[float], target: Path) -> Path:
    """The seed MR stretched over a ``size`` grid of ``spacing`` (same centre, linear)."""
    seed = sitk.ReadImage(str(SEED))
    centre = seed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in seed.GetSize()])
    reference = sitk.Image(size, sitk.sitkInt16)
    reference.SetSpacing(spacing)
    offset = reference.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size])
    reference.SetOrigin([c - o for c, o in zip(centre, offset)])
    # stretch the seed's field of view over the whole grid, so every voxel holds anatomy
    scale = [s * sp / (n * p) for s, sp, n, p in zip(seed.GetSize(), seed.GetSpacing(), size, spacing)]
    stretch = sitk.ScaleTransform(3, scale)
    stretch.SetCenter(centre)
    volume = sitk.Resample(seed, reference, stretch, sitk.sitkLinear, 0.0, sitk.sitkInt16)
    sitk.WriteImage(volume, str(target), useCompression=False)
    return target


def in_small_shm(command: list[str], shm: str) -> list[str]:
    """``command`` in a mount namespace whose /dev/shm is a ``shm``-sized tmpfs."""
    namespace = ["unshare", "--mount"] if os.geteuid() == 0 else \
        ["unshare", "--user", "--map-root-user", "--mount"]
    script = f'mount -t tmpfs -o size={shm} tmpfs /dev/shm && exec "$@"'
    return [*namespace, "sh", "-c", script, "sh", *command]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shm", default="64m", help="size of /dev/shm ('' keeps the host's)")
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 735], metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.7, 0.7, 1.0])
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("flags", nargs="*", help="extra process.py flags (after --)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        started = time.perf_counter()
        volume = large_volume(args.size, args.spacing, scratch / "large.mha")
        made = time.perf_counter() - started
        out = scratch / "out"
        command = [sys.executable, "-c", MAX_RSS, sys.executable, str(REPO / "process.py"),
                   "--input", str(volume), "--output", str(out), "--weights", str(args.weights),
                   "--device", args.device, *args.flags]
        if args.shm:
            command = in_small_shm(command, args.shm)
        started = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        rss = [int(line.split()[1]) for line in run.stdout.splitlines() if line.startswith("MAX_RSS_KB")]
        summary_file = out / "sslmedsam2-summary.json"
        case = json.loads(summary_file.read_text())["cases"][0] if summary_file.is_file() else {}
        figures = {"size_xyz": args.size, "spacing": args.spacing, "device": args.device,
                   "shm": args.shm or "host", "flags": args.flags, "exit_code": run.returncode,
                   "peak_rss_gb": round(rss[0] / 2**20, 2) if rss else None,
                   "wall_s": round(wall, 1), "case_s": case.get("seconds"),
                   "detail": case.get("message"), "volume_written_s": round(made, 1)}
        print(json.dumps(figures, indent=2))
        if run.returncode != 0:
            print(run.stderr[-3000:], file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        return run.returncode
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
