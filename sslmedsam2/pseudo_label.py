"""Pseudo labelling of unlabelled volumes (few-shot engines, or an nnU-Net ensemble's
predictions): resumable, shardable, spreadable over an executor, one JSON line per case.

Output per case: ``<out>/<case>/<SEQ>.nii.gz`` (0/1 mask on the query's grid) and
``<out>/<case>/<SEQ>_uncertainty.nii.gz`` (binary entropy of the fused probability). The mask is
renamed into place last, so a case whose mask exists is complete and is skipped: an interrupted
run continues where it stopped, whichever executor (``sslmedsam2.executors``) ran it;
``--shard i/n`` gives each machine every n-th case starting at i.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sslmedsam2.engines.base import Engine
from sslmedsam2.errors import SSLMedSAM2Error
from sslmedsam2.executors import Executor, LocalExecutor
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


class CaseLabeller:
    """Labels one query per call into ``out_dir``. Picklable: it carries how to build its engine
    (``make_engine``), and builds it on first use in whichever process runs it; ``engine`` hands
    it one already built here."""

    def __init__(self, make_engine: Callable[[], Engine], out_dir: Path, sequence: str = GED4,
                 largest_only: bool = False, engine: Engine | None = None) -> None:
        self.make_engine = make_engine
        self.out_dir = Path(out_dir)
        self.sequence = sequence
        self.largest_only = largest_only
        self._engine = engine

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_engine": None}  # each process loads its own model

    def __call__(self, query: Query) -> dict:
        if self._engine is None:
            self._engine = self.make_engine()
        return _label_one(self._engine, query, self.out_dir, self.sequence, self.largest_only)

    def lost(self, query: Query, why: str) -> dict:
        """The record of a case whose worker died every time it tried it."""
        return {"case": query.case, "sequence": self.sequence, "input": str(query.image),
                "status": "error", "error": f"{query.image}: {why}", "seconds": 0.0}


def pseudo_label(labeller: CaseLabeller, queries: list[Query], shard: Shard = Shard(),
                 progress: bool = True, executor: Executor | None = None,
                 desc: str = "pseudo labels") -> list[dict]:
    """Label every query of this shard not labelled yet; returns one record per case.

    ``labeller.largest_only`` keeps the largest connected component, as ``process.py`` does (the
    few-shot engines already do; nnU-Net predictions do not). Cases go to ``executor`` (default:
    this process, one after another); finished ones are skipped before any is sent.
    """
    out_dir = labeller.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    selected = shard.select(queries)
    todo = [q for q in selected if not outputs_of(out_dir, q, labeller.sequence)[0].is_file()]
    executor = executor or LocalExecutor()
    journal = out_dir / f"pseudo_labels.shard-{shard.index}-of-{shard.count}.jsonl"

    def finished(record: dict) -> None:
        if not executor.runs_here and record["status"] == "error":
            log.error("%s", record["error"])  # workers' logs stay on their nodes
        with journal.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    done = executor.map_cases(labeller, todo, desc=desc, progress=progress,
                              lost=labeller.lost, finished=finished)
    by_case = {record["case"]: record for record in done}
    return [by_case.get(q.case) or {"case": q.case, "sequence": labeller.sequence,
                                    "input": str(q.image), "status": "skipped", "seconds": 0.0}
            for q in selected]


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
