"""Where a run's messages go: everything to the run's log file, the terminal only what a person
needs while bars already show progress."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

#: Warnings about other libraries' future changes: nothing a user of this tool can act on.
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)

#: ``log.info(..., extra=FILE_ONLY)``: a line the run log keeps and the terminal does not need
#: (a progress bar on screen already says it)
FILE_ONLY = {"file_only": True}


class ConsoleFilter(logging.Filter):
    """Keeps other libraries' deprecation warnings (captured by ``logging.captureWarnings``) and
    ``FILE_ONLY`` lines off the terminal; log files still get them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "file_only", False):
            return False
        if record.name != "py.warnings":
            return True
        text = record.getMessage()
        return "sslmedsam2" in text or not any(f"{c.__name__}:" in text for c in DEPRECATIONS)


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[Path]:
    """Everything logged during a run (ours at INFO, captured warnings) also goes to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
