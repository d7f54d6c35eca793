"""CARE sequence names and how files map to them."""

from __future__ import annotations

GED4 = "GED4"
#: Sequences of a CARE case, in the order the challenge lists them. GED4 is always present.
CARE_SEQUENCES: tuple[str, ...] = ("GED4", "GED1", "GED2", "GED3", "T1", "T2", "DWI_800")


def normalise_sequence(name: str) -> str:
    """Canonical spelling of a sequence name given on a command line (``ged4`` -> ``GED4``)."""
    upper = name.strip().upper()
    for sequence in CARE_SEQUENCES:
        if sequence.upper() == upper:
            return sequence
    raise ValueError(f"unknown sequence {name!r}; expected one of {', '.join(CARE_SEQUENCES)}")
