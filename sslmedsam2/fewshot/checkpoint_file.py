"""A PyTorch checkpoint file checked as a container, before anything reads its weights.

``torch.load`` on a bad file answers with one opaque, multi-line error (for a cut-off download:
"PytorchStreamReader failed reading zip archive: failed finding central directory"), and a
loader that calls it per case repeats that error per case. Here each way a file goes wrong (no
file, a folder, an empty file, a cut-off download, a text file, a zip that is no checkpoint, a
damaged record) gets its own one-line ``WeightsError`` naming the file, from the bytes on disk
only: the zip index, the first record's header and the start of the file. Nothing is unpickled
until :func:`read_payload`, and that only with ``weights_only`` (tensors, never code).
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslmedsam2.errors import WeightsError

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOLS = (2, 3, 4, 5)
_HEAD_BYTES = 4096


@dataclass(frozen=True)
class Expected:
    """The file a checkpoint should be (from its name or its first record), for messages."""

    filename: str
    size: int | None


@dataclass(frozen=True)
class ArchiveFacts:
    """What the container says: its size and whether it is a zip (new) or a pickle (legacy)."""

    path: Path
    size: int
    is_zip: bool


def first_line(error: BaseException | str, limit: int = 240) -> str:
    """A one-line reason from a (possibly multi-line) message, cut at a word if very long."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    line = lines[0]
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0] + " ..."


def first_record(path: Path) -> str | None:
    """The name of a zip file's first record, from its local header (readable even when the
    index at the end is lost). torch names records ``<archive>/data.pkl``, ``<archive>/...``
    after the file it saved to, which identifies a cut-off official download."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError:
        return None
    if not head.startswith(_ZIP_MAGIC) or len(head) < 30:
        return None
    length = int.from_bytes(head[26:28], "little")
    name = head[30 : 30 + length]
    return name.decode("utf-8", "replace") if len(name) == length else None


def check_archive(path: Path, expected: Expected | None = None) -> ArchiveFacts:
    """The container's facts, or a one-line WeightsError saying what the file is instead."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file; copy the checkpoint there or give its path")
    if not path.is_file():
        raise WeightsError(f"{path}: a folder, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"{path}: empty file (0 bytes), not a checkpoint; copy it again")
    with open(path, "rb") as handle:
        head = handle.read(_HEAD_BYTES)
    if head.startswith(_ZIP_MAGIC):
        _check_zip_index(path, size, expected)
        return ArchiveFacts(path, size, is_zip=True)
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in _PICKLE_PROTOCOLS:
        return ArchiveFacts(path, size, is_zip=False)  # torch's legacy (pre-1.6) format
    raise WeightsError(f"{path}: not a checkpoint: {_what_else(head, size)}{_wanted(expected)}")


def _check_zip_index(path: Path, size: int, expected: Expected | None) -> None:
    """A zip whose index (at its end) is gone is a cut-off file; one without data.pkl is
    some other zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        if expected is not None and expected.size is not None:
            short = f"{size:,} bytes, expected {expected.size:,} for {expected.filename}"
        else:
            short = f"{size:,} bytes and no zip index at its end"
        raise WeightsError(f"{path}: truncated or not a checkpoint: {short} (an interrupted "
                           "download or copy?); copy the file again") from None
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        raise WeightsError(f"{path}: not a PyTorch checkpoint: a zip archive of {size:,} bytes "
                           "without data.pkl")


def _what_else(head: bytes, size: int) -> str:
    """What a file that is no PyTorch archive looks like, in a few words."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"{size:,} bytes in an unknown format (a PyTorch checkpoint is a zip archive)"
    lowered = text.lstrip().lower()
    if lowered.startswith("version https://git-lfs"):
        return f"a Git LFS pointer of {size:,} bytes, not the file (run git lfs pull)"
    if lowered.startswith(("<!doctype html", "<html")):
        return f"an HTML page of {size:,} bytes (a failed download?)"
    return f"a text file of {size:,} bytes (a SAM2 checkpoint is a PyTorch .pt archive)"


def _wanted(expected: Expected | None) -> str:
    if expected is None or expected.size is None:
        return ""
    return f"; expected {expected.size:,} bytes for {expected.filename}"


def verify_records(path: Path) -> None:
    """Every record's CRC, so a damaged file is refused before a model is built from it.
    Reads the whole file once (about 0.2 s per 150 MB); for files no published sha256 covers."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise WeightsError(f"{path}: corrupt checkpoint ({first_line(error)}); copy the file "
                           "again") from None
    if bad is not None:
        raise WeightsError(f"{path}: corrupt checkpoint: record {bad} fails its CRC check; copy "
                           "the file again")


def read_payload(facts: ArchiveFacts) -> Any:
    """The unpickled top level, tensors memory-mapped (not read) for zip files; only plain
    data and tensors are accepted (``weights_only``), so no code in the file runs."""
    import torch  # heavy; only once a file has passed the container checks

    try:
        return torch.load(facts.path, map_location="cpu", weights_only=True, mmap=facts.is_zip)
    except Exception as error:  # torch raises many types for files it cannot read
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused:  # torch's own advice (allow the global) is not ours: code never runs here
            raise WeightsError(f"{facts.path}: not a plain weights file: it pickles "
                               f"{refused.group(1)}, and only tensors and plain data are read; "
                               "save {'model': model.state_dict()}") from None
        raise WeightsError(f"{facts.path}: unreadable checkpoint ({first_line(error)}); copy the "
                           "file again") from None
