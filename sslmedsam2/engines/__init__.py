"""Segmentation engines, by name: each registers its factory here."""

from __future__ import annotations

from pathlib import Path

from sslmedsam2.engines.atlas import AtlasEngine
from sslmedsam2.engines.average import AverageEngine
from sslmedsam2.engines.base import Engine, EngineFactory, RuntimeOptions, Segmentation
from sslmedsam2.engines.nnunet import NnUNetEngine
from sslmedsam2.engines.sam2 import Sam2Engine
from sslmedsam2.errors import UsageError

#: process.py's chain when neither the command line nor the weights' manifest names one
DEFAULT_ENGINES = ("nnunet", "sam2", "atlas")
#: the chain an SSL run exports by default (``loop.serve_average``): the model averaged with the
#: atlas over the supports' sequence, the plain chain for every other sequence
AVERAGED_ENGINES = ("average", *DEFAULT_ENGINES)

ENGINES: dict[str, EngineFactory] = {
    "nnunet": NnUNetEngine,
    "sam2": Sam2Engine.from_weights,
    "atlas": AtlasEngine.from_weights,
    "average": AverageEngine.from_weights,
}


def build_engines(names: tuple[str, ...], weights_dir: Path, options: RuntimeOptions) -> list[Engine]:
    """Engines in order of preference; unknown names are a usage error."""
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise UsageError(f"unknown engine(s) {', '.join(unknown)}; available: {', '.join(ENGINES)}")
    return [ENGINES[name](weights_dir, options) for name in names]


def manifest_engines(manifest: dict) -> tuple[str, ...]:
    """The chain a weights folder asks for (its manifest's ``engines``), else the default one."""
    return tuple(manifest.get("engines") or DEFAULT_ENGINES)


__all__ = ["AVERAGED_ENGINES", "DEFAULT_ENGINES", "ENGINES", "Engine", "RuntimeOptions", "Segmentation",
           "build_engines", "manifest_engines"]
