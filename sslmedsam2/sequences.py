"""CARE sequence names and how files map to them."""

from __future__ import annotations

import re

GED4 = "GED4"
#: Sequences of a CARE case, in the order the challenge lists them. GED4 is always present.
CARE_SEQUENCES: tuple[str, ...] = ("GED4", "GED1", "GED2", "GED3", "T1", "T2", "DWI_800")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def valid_sequence_name(name: str) -> bool:
    """Sequence names become folder and nnU-Net dataset names: letters, digits, ``_.-``."""
    return bool(_NAME.match(name))


def normalise_sequence(name: str) -> str:
    """Canonical spelling of a sequence name given on a command line: CARE's names in CARE's
    case (``ged4`` -> ``GED4``), any other collection's sequence name as given (``T2SPIR``)."""
    stripped = name.strip()
    for sequence in CARE_SEQUENCES:
        if sequence.upper() == stripped.upper():
            return sequence
    if not valid_sequence_name(stripped):
        raise ValueError(f"sequence name {name!r}: use letters, digits, '_', '.' or '-' (CARE: "
                         f"{', '.join(CARE_SEQUENCES)})")
    return stripped
