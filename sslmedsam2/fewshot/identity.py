"""What a SAM2 checkpoint file is, decided from its content once, before any case.

In order: the container (``checkpoint_file``: missing, empty, cut off, text...), then the bytes
when its size is that of an official file (sha256: "MedSAM2_latest.pt, official, sha256 ok"),
else its tensors (``architectures``: which config builds exactly them), whatever its name. A
file no config fits is refused with the closest config and how it differs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslmedsam2.errors import WeightsError
from sslmedsam2.fewshot.architectures import Layout, foreign_hint, layout_of, rank
from sslmedsam2.fewshot.checkpoint_file import (
    ArchiveFacts,
    Expected,
    check_archive,
    first_record,
    read_payload,
    verify_records,
)
from sslmedsam2.fewshot.known_checkpoints import (
    CheckpointSpec,
    KnownFile,
    known_file_named,
    known_files_of_size,
    spec_by_name,
)
from sslmedsam2.manifest import sha256_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointIdentity:
    """A verified checkpoint: the model it holds and how that was established."""

    path: Path
    spec: CheckpointSpec
    size: int
    official: KnownFile | None = None
    note: str = ""

    def short(self) -> str:
        """``MedSAM2_latest.pt, official, sha256 ok`` or ``x.pt, recognised by its tensors``."""
        if self.official is None:
            return f"{self.path.name}, recognised by its tensors"
        renamed = "" if self.path.name == self.official.filename else (
            f" (renamed {self.official.filename})")
        return f"{self.path.name}, official{renamed}, sha256 ok"

    def describe(self) -> str:
        """The log and report line: what the file is, which model, and any caveat."""
        note = f"; {self.note}" if self.note else ""
        return f"{self.short()}: {self.spec.title}{note}"


def identify_checkpoint(path: Path | str, name: str | None = None) -> CheckpointIdentity:
    """What ``path`` holds, or a one-line WeightsError. ``name`` (``tiny``, ``medsam2`` ...)
    asserts the model: it breaks the one tie tensors leave (MedSAM2 is a SAM 2.1 tiny at 512 px,
    same tensors as the 1024 px tiny) and is refused when the file holds another model."""
    path = Path(path)
    facts = check_archive(path, _expected(path))
    official, note = _official(facts)
    if official is not None:
        return _checked_name(CheckpointIdentity(path, spec_by_name(official.spec), facts.size,
                                                official), name)
    if facts.is_zip:
        verify_records(path)
    spec, why = _spec_from_tensors(path, layout_of(weights_of(read_payload(facts), path)), name)
    return CheckpointIdentity(path, spec, facts.size, None, "; ".join(x for x in (note, why) if x))


def weights_of(payload: Any, path: Path) -> dict[str, Any]:
    """The state dict: ``payload['model']`` (sam2's format) or a flat dict of tensors."""
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        return payload["model"]
    if isinstance(payload, dict) and payload and all(hasattr(v, "shape") for v in payload.values()):
        return payload
    if isinstance(payload, dict):
        holds = ", ".join(map(str, list(payload)[:5])) or "nothing"
    else:
        holds = f"a {type(payload).__name__}"
    raise WeightsError(f"{path}: not a SAM2 checkpoint (no 'model' weights; it holds {holds})")


def _expected(path: Path) -> Expected | None:
    """The official file this one claims to be, by its name or its first zip record's folder."""
    record = first_record(path) if path.is_file() else None
    known = known_file_named(path.name) or (
        known_file_named(f"{record.split('/')[0]}.pt") if record and "/" in record else None)
    return Expected(known.filename, known.size) if known else None


def _official(facts: ArchiveFacts) -> tuple[KnownFile | None, str]:
    """The official file with these exact bytes, hashed only when the size says it may be one
    (or the name says so and that file's size is not known)."""
    candidates = known_files_of_size(facts.size)
    named = known_file_named(facts.path.name)
    if named is not None and named.size is None:
        candidates.append(named)
    if not candidates:
        return None, ""
    digest = sha256_of(facts.path)
    match = next((k for k in candidates if k.sha256 == digest), None)
    if match is not None:
        return match, ""
    names = " or ".join(k.filename for k in candidates)
    return None, f"not the official {names} (another sha256): a fine-tune, or a damaged copy"


def _checked_name(identity: CheckpointIdentity, name: str | None) -> CheckpointIdentity:
    if name is not None and identity.spec.name != name.lower():
        raise WeightsError(f"{identity.path}: {identity.short()}, the {identity.spec.name} "
                           f"model, not {name}; leave out the model name or pass another file")
    return identity


def _spec_from_tensors(path: Path, layout: Layout, name: str | None) -> tuple[CheckpointSpec, str]:
    """The spec whose model has exactly ``layout``; ties broken by ``name``, then file name."""
    if not layout:
        raise WeightsError(f"{path}: not a SAM2 checkpoint (its 'model' entry holds no tensors)")
    diffs = rank(layout)
    exact = [diff.spec for diff in diffs if diff.exact]
    if not exact:
        closest = diffs[0]
        hint = foreign_hint(layout)
        raise WeightsError(
            f"{path}: no SAM2 model has exactly these {len(layout)} tensors; closest is "
            f"{closest.spec.title} ({closest.spec.config}): {closest.describe()}"
            f"; {hint or 'use an unmodified SAM 2 / 2.1 or MedSAM2 checkpoint'}")
    return _tie_break(path, exact, name)


def _tie_break(path: Path, exact: list[CheckpointSpec],
               name: str | None) -> tuple[CheckpointSpec, str]:
    """Tensors do not say the image size: MedSAM2 (512 px) and SAM 2.1 tiny (1024 px) share them."""
    if name is not None:
        wanted = spec_by_name(name)
        if wanted not in exact:
            raise WeightsError(f"{path}: its tensors are a {exact[0].title}'s, not the {name} "
                               "model; leave out the model name or pass another file")
        return wanted, ""
    by_filename = next((s for s in exact if s.filename.lower() == path.name.lower()), None)
    if by_filename is not None or len(exact) == 1:
        return by_filename or exact[0], ""
    others = [s for s in exact if s.image_size == 1024]
    small = [s for s in exact if s.image_size != 1024]
    if small and "medsam" in path.name.lower():
        return small[0], (f"{small[0].image_size} px because its name says MedSAM (its tensors "
                          f"fit {others[0].title if others else 'others'} too)")
    chosen = others[0] if others else exact[0]
    return chosen, (f"{chosen.image_size} px assumed (its tensors fit "
                    f"{', '.join(s.title for s in exact if s is not chosen)} too; a file name "
                    "containing 'medsam' means 512 px)")
