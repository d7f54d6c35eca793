"""TFFS-MedSAM2 cost on CPU (tiny SAM2.1, random weights: mechanics and cost, never quality).

  cost   seconds per call of the image encoder, memory attention, mask decoder and memory encoder,
         as a function of the number of conditioning (prompted) frames, at the model size (512).
  care   wall time of the CPU-practical setting on a CARE-size query (640 x 520 x 64, the first
         example test case resampled) with the example's labelled cases as supports, at 512.
  cache  exact caches vs the naive path (every frame of every video re-encoded, every support
         slice re-prompted), side by side, at the paper's shape (10 supports x 5 insertions, both
         directions) with fewer slices and a smaller image so the naive arm finishes; then a
         second query of the same size on the warmed segmenter; outputs must agree.

    python benchmarks/bench_fewshot.py cost [--frames 1 5 10 20 40] [--size 512]
    python benchmarks/bench_fewshot.py cache [--size 128] [--threads 1]
    python benchmarks/bench_fewshot.py care --data runs/demo/data   # CPU-practical, 64-slice query
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from sslmedsam2.fewshot.checkpoints import build_predictor, resolve_checkpoint
from sslmedsam2.fewshot.tffs import TFFSConfig, TFFSSegmenter, segment_query

MODULES = ("image_encoder", "memory_attention", "sam_mask_decoder", "memory_encoder")


@contextlib.contextmanager
def module_timer(predictor: torch.nn.Module) -> Iterator[dict]:
    """Wall seconds and calls per SAM2 module, from forward pre/post hooks."""
    totals: dict = defaultdict(lambda: [0.0, 0])
    handles = []
    for name in MODULES:
        module = getattr(predictor, name)
        started: list[float] = []
        handles.append(module.register_forward_pre_hook(lambda *_, s=started: s.append(time.perf_counter())))
        def done(*_, s=started, n=name):
            totals[n][0] += time.perf_counter() - s.pop()
            totals[n][1] += 1
        handles.append(module.register_forward_hook(done))
    try:
        yield totals
    finally:
        for handle in handles:
            handle.remove()


def volume(slices: int, size: int, seed: int, with_mask: bool = True) -> tuple[sitk.Image, sitk.Image]:
    """A blob phantom (z, y, x) with a mask on every slice."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:slices, :size, :size]
    blob = ((y - size / 2) ** 2 + (x - size / 2.2) ** 2) < (size / 4) ** 2
    image = (100 + 400 * blob + rng.normal(0, 20, blob.shape)).clip(0).astype(np.int16)
    image_itk = sitk.GetImageFromArray(image)
    mask_itk = sitk.GetImageFromArray(blob.astype(np.uint8))
    mask_itk.CopyInformation(image_itk)
    return image_itk, mask_itk


def cost(size: int, frame_counts: list[int], query_slices: int) -> None:
    predictor = build_predictor(resolve_checkpoint(None, name="tiny", allow_random=True),
                                hydra_overrides=[f"++model.image_size={size}"])
    query, _ = volume(query_slices, 96, seed=1)
    print(f"tiny SAM2.1 at {size} px, random weights, {torch.get_num_threads()} thread(s); "
          f"query {query_slices} slices; 1 support x 1 insertion\n")
    print("| prompted frames | encoder s/frame | memory attention s/call (calls) | "
          "mask decoder s/call | memory encoder s/call | total s |\n|---|---|---|---|---|---|")
    for count in frame_counts:
        support = volume(count, 96, seed=2)
        config = TFFSConfig(insertions=1, max_cond_frames_in_attn=-1)
        started = time.perf_counter()
        with module_timer(predictor) as totals:
            result = segment_query(predictor, query, [support], config)
        total = time.perf_counter() - started
        enc_s, _ = totals["image_encoder"]
        att_s, att_n = totals["memory_attention"]
        dec_s, dec_n = totals["sam_mask_decoder"]
        mem_s, mem_n = totals["memory_encoder"]
        print(f"| {count} | {enc_s / max(result.encoder_frames, 1):.2f} | "
              f"{att_s / max(att_n, 1):.2f} ({att_n}) | {dec_s / max(dec_n, 1):.3f} | "
              f"{mem_s / max(mem_n, 1):.3f} | {total:.1f} |")


def cache(size: int, query_slices: int, support_slices: int, supports: int, insertions: int) -> None:
    torch.manual_seed(0)
    predictor = build_predictor(resolve_checkpoint(None, name="tiny", allow_random=True),
                                hydra_overrides=[f"++model.image_size={size}"])
    query, _ = volume(query_slices, 64, seed=1)
    pairs = [volume(support_slices, 64, seed=10 + i) for i in range(supports)]
    print(f"tiny SAM2.1 at {size} px, random weights, {torch.get_num_threads()} thread(s); query "
          f"{query_slices} slices, {supports} supports x {support_slices} slices, {insertions} "
          "insertions, both directions\n")
    print("| arm | encoder frames | encoder calls | memory-encoder calls | wall s |\n"
          "|---|---|---|---|---|")
    naive_config = TFFSConfig(insertions=insertions, cache_encoder=False)
    naive = TFFSSegmenter(predictor, pairs, naive_config).segment(query)
    segmenter = TFFSSegmenter(predictor, pairs, TFFSConfig(insertions=insertions))
    exact = segmenter.segment(query)
    again = segmenter.segment(query)
    for arm, r in (("naive (authors' scheme)", naive), ("exact caches, first query", exact),
                   ("exact caches, next query", again)):
        print(f"| {arm} | {r.encoder_frames} | {r.encoder_calls} | {r.memory_encoder_calls} | "
              f"{r.seconds:.1f} |")
    difference = max(float(np.abs(naive.probability - r.probability).max()) for r in (exact, again))
    print(f"\nfirst query: encoder frames {naive.encoder_frames / exact.encoder_frames:.1f}x "
          "fewer, "
          f"memory-encoder calls {naive.memory_encoder_calls / exact.memory_encoder_calls:.2f}x "
          f"fewer, wall time {naive.seconds / exact.seconds:.2f}x faster; next query: wall time "
          f"{naive.seconds / again.seconds:.2f}x faster; max |probability difference| = "
          f"{difference:.2e}; support cache {segmenter.cache.used_bytes / 2**20:.1f} MB")


def care(data: Path) -> None:
    from bench_inference import care_size_volume

    from sslmedsam2.supports import find_supports, load_support

    predictor = build_predictor(resolve_checkpoint(None, name="medsam2", allow_random=True))
    source = sorted((data / "test" / "input").glob("*/*/GED4.nii.gz"))[0]
    with tempfile.TemporaryDirectory() as tmp:
        query = sitk.ReadImage(str(care_size_volume(source, Path(tmp) / "care.nii.gz")))
    supports = [load_support(s) for s in find_supports(data / "train")]
    config = TFFSConfig.cpu_practical()
    result = segment_query(predictor, query, supports, config)
    slices = [s[0].GetSize()[2] for s in supports[: config.max_supports]]
    print(f"MedSAM2-shaped tiny model at 512 px, random weights, {torch.get_num_threads()} "
          f"thread(s); query {query.GetSize()} voxels; supports with {slices} slices; "
          f"{config}\n")
    print(f"wall time {result.seconds:.0f} s ({result.seconds / 60:.1f} min) per query case; "
          f"encoder frames {result.encoder_frames}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=["cost", "cache", "care"])
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data"),
                        help="care: a make-example folder (test input + labelled training cases)")
    parser.add_argument("--size", type=int, default=None, help="model image size")
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 5, 10, 20, 40])
    parser.add_argument("--query-slices", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        if args.section == "cost":
            cost(args.size or 512, args.frames, args.query_slices)
        elif args.section == "care":
            care(args.data)
        else:
            cache(args.size or 128, args.query_slices, support_slices=3, supports=10, insertions=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
