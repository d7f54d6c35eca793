"""Few-shot pseudo labelling of unlabelled volumes: resumable, shardable, one JSON line per case.

Output per case: ``<out>/<case>/<SEQ>.nii.gz`` (0/1 mask on the query's grid) and
``<out>/<case>/<SEQ>_uncertainty.nii.gz`` (binary entropy of the fused probability). The mask is
renamed into place last, so a case whose mask exists is complete and is skipped: an interrupted
run continues where it stopped;
``--shard i/n`` gives each machine every n-th case starting at i.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sslmedsam2.engines.base import Engine
from sslmedsam2.errors import SSLMedSAM2Error
from sslmedsam2.io import itk_reason, read_volume, volume_stem, volume_suffix, write_map, write_mask
from sslmedsam2.orientation import segment_in_orientation
from sslmedsam2.postprocess import largest_component
from sslmedsam2.sequences import GED4

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Query:
    case: str
    image: Path
    vendor: str | None = None


@dataclass(frozen=True)
class Shard:
    """Cases ``index, index + count, ...`` of the sorted case list (0 <= index < count)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
        if not 0 <= index < count:
            raise ValueError(f"--shard {text!r}: need 0 <= i < n")
        return cls(index, count)

    def select(self, queries: list[Query]) -> list[Query]:
        return queries[self.index::self.count]


def find_queries(root: Path, sequence: str = GED4) -> list[Query]:
    """``<root>/<case>/<SEQ>.*`` or a CARE root ``<root>/Vendor_X/<case>/<SEQ>.*``, sorted by case."""
    found = {}
    for pattern in ("*/*", "*/*/*"):
        for path in sorted(Path(root).glob(pattern)):
            if volume_suffix(path) and volume_stem(path) == sequence and path.is_file():
                vendor_dir = path.parent.parent
                vendor = vendor_dir.name.removeprefix("Vendor_") if vendor_dir != Path(root) else None
                found.setdefault(path.parent.name, Query(path.parent.name, path, vendor))
    return [found[case] for case in sorted(found)]


def outputs_of(out_dir: Path, query: Query, sequence: str) -> tuple[Path, Path]:
    folder = out_dir / query.case
    return folder / f"{sequence}.nii.gz", folder / f"{sequence}_uncertainty.nii.gz"


def pseudo_label(engine: Engine, queries: list[Query], out_dir: Path, sequence: str = GED4,
                 shard: Shard = Shard(), progress: bool = True,
                 largest_only: bool = False) -> list[dict]:
    """Label every query of this shard not labelled yet; returns one record per case.

    ``largest_only`` keeps the largest connected component, as ``process.py`` does (the few-shot
    engines already do; nnU-Net predictions do not).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = out_dir / f"pseudo_labels.shard-{shard.index}-of-{shard.count}.jsonl"
    records = []
    selected = shard.select(queries)
    for query in tqdm(selected, desc=f"pseudo labels ({engine.name})", unit="case",
                      file=sys.stderr, disable=not progress):
        record = _label_one(engine, query, out_dir, sequence, largest_only)
        records.append(record)
        if record["status"] != "skipped":
            with journal.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
    return records


def _label_one(engine: Engine, query: Query, out_dir: Path, sequence: str,
               largest_only: bool) -> dict:
    mask_path, uncertainty_path = outputs_of(out_dir, query, sequence)
    record = {"case": query.case, "sequence": sequence, "engine": engine.name,
              "input": str(query.image), "status": "ok", "seconds": 0.0}
    if mask_path.is_file():
        record["status"] = "skipped"
        return record
    started = time.perf_counter()
    try:
        engine.load(sequence)
        image = read_volume(query.image)
        segmentation = segment_in_orientation(engine, image, sequence, query.vendor)
        if segmentation.uncertainty is not None:
            write_map(segmentation.uncertainty, image, uncertainty_path)
        mask = largest_component(segmentation.mask) if largest_only else segmentation.mask
        write_mask(mask, image, mask_path)  # last: its presence marks the case done
        record["detail"] = segmentation.detail
    except SSLMedSAM2Error as exc:
        record["status"], record["error"] = "error", str(exc)
        log.error("%s", exc)
    except Exception as exc:  # an engine crash on one case must not lose the others
        record["status"] = "error"
        record["error"] = (f"{query.image}: segmentation failed "
                           f"({type(exc).__name__}: {itk_reason(str(exc))})")
        log.error("%s", record["error"])
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record
