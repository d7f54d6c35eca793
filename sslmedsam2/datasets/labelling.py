"""Where ``sslmedsam2 pseudo-label`` finds its supports and its queries.

CARE-shaped folders are read as before (GED4 supports in case folders or a CARE root, every
``<SEQ>`` volume as a query); any other collection (nnU-Net raw, images + masks, flat pairs) gives
its labelled cases as supports and its unlabelled ones as queries, under the sequence name the
user chose, so a researcher labels their own folder without renaming it to CARE's.
"""

from __future__ import annotations

from pathlib import Path

from sslmedsam2.datasets.check import require_clean
from sslmedsam2.datasets.collection import read_collection
from sslmedsam2.pseudo_label import Query, find_queries
from sslmedsam2.sequences import GED4
from sslmedsam2.supports import Support, find_supports


def labelling_supports(root: Path, sequence: str) -> tuple[list[Support], str]:
    """The labelled cases to draw pseudo labels from, and their sequence: CARE's GED4, or
    ``sequence`` for any other collection. Raises naming every file at fault (or the folder,
    when it is none)."""
    supports = find_supports(root)
    if supports:
        return supports, GED4
    return require_clean(read_collection(root, sequence)).labelled, sequence


def labelling_queries(root: Path, sequence: str) -> list[Query]:
    """Every ``<SEQ>`` volume of case folders or a CARE root, else a collection's unlabelled cases
    (by name: a query that cannot be read fails alone, as any case does)."""
    return find_queries(root, sequence) or read_collection(root, sequence).unlabelled

