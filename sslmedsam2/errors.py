"""Exceptions whose one-line messages say what went wrong, where, and how to fix it."""

from __future__ import annotations

from pathlib import Path


class SSLMedSAM2Error(Exception):
    """Base class: anything the user can act on. The message is shown as one line."""


class InputError(SSLMedSAM2Error):
    """An input volume cannot be used; names the file and the problem."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class LayoutError(SSLMedSAM2Error):
    """The input folder matches none of the supported layouts (CARE, Grand Challenge, plain)."""


class WeightsError(SSLMedSAM2Error):
    """Model weights are missing, incomplete or corrupt."""


class EngineUnavailableError(SSLMedSAM2Error):
    """No configured engine can segment a given sequence."""


class UsageError(SSLMedSAM2Error):
    """An option value that cannot work (unknown engine, unavailable device)."""
