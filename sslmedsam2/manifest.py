"""The weights folder's manifest: what was trained on what, with which config, and every file's checksum.

A weights folder travels (copied into images, uploaded to platforms, edited by hand). The manifest
lets ``process.py`` refuse a folder whose files are not the ones the training run exported: a
checkpoint swapped, truncated or added after the fact would otherwise be served silently. A folder
without a manifest (assembled by hand) is still accepted, with a log line.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from sslmedsam2.errors import WeightsError
from sslmedsam2.io import write_text_atomic
from sslmedsam2.sequences import GED4

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: Files that do not affect predictions and may be added or edited freely.
_FREE = {MANIFEST, "README.md", "NOTICE", "NOTICE.md"}


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weight_files(weights_dir: Path) -> list[Path]:
    """Every file the engines may read, relative to ``weights_dir`` (hidden and free files aside)."""
    root = Path(weights_dir)
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and relative.name not in _FREE and not any(
                part.startswith(".") for part in relative.parts):
            files.append(relative)
    return files


def write_manifest(weights_dir: Path, info: dict[str, Any]) -> Path:
    """Checksum every weight file and write ``manifest.json`` (atomically) with ``info``."""
    files = {str(rel): {"sha256": sha256_of(Path(weights_dir) / rel),
                        "bytes": (Path(weights_dir) / rel).stat().st_size}
             for rel in weight_files(weights_dir)}
    return write_text_atomic(json.dumps({**info, "files": files}, indent=2, default=str) + "\n",
                             Path(weights_dir) / MANIFEST)


def verify_manifest(weights_dir: Path) -> dict[str, Any] | None:
    """The manifest when the folder matches it, None when there is none; WeightsError otherwise."""
    path = Path(weights_dir) / MANIFEST
    if not path.is_file():
        log.info("%s: no %s (hand-assembled weights); files are not checked", weights_dir, MANIFEST)
        return None
    try:
        manifest = json.loads(path.read_text())
        listed = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"{path}: unreadable manifest ({type(exc).__name__}); re-export the weights") from None
    present = {str(rel) for rel in weight_files(weights_dir)}
    missing = sorted(set(listed) - present)
    extra = sorted(present - set(listed))
    changed = sorted(rel for rel in set(listed) & present
                     if sha256_of(Path(weights_dir) / rel) != listed[rel].get("sha256"))
    problems = [f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                for label, items in (("missing", missing), ("not in the manifest", extra),
                                     ("changed", changed)) if items]
    if problems:
        raise WeightsError(f"{path}: weights folder does not match its manifest ("
                           f"{'; '.join(problems)}); re-export it or remove the stray files")
    log.info("%s: %d file(s) match the manifest", weights_dir, len(listed))
    return manifest


def exported_model_info(weights_dir: Path, sequence: str) -> dict[str, Any]:
    """What the manifest says of ``sequence``'s exported model (empty without a readable manifest:
    checking the folder against it is ``verify_manifest``'s job, done before serving)."""
    try:
        manifest = json.loads((Path(weights_dir) / MANIFEST).read_text())
        return dict(manifest["models"][sequence])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def sole_sequence(manifest: dict) -> str:
    """The sequence of weights trained on one sequence only; GED4 otherwise (CARE's)."""
    sequences = list(manifest.get("models", {}))
    return sequences[0] if len(sequences) == 1 else GED4
