"""What a person sees while nnU-Net trains: one progress bar per fold, warnings, nothing else.

nnU-Net prints a dozen lines per epoch and a configuration dump per fold; a loop that trains
several models buries its own messages under thousands of them. Here each fold's stdout (and the
warnings Python raises meanwhile) goes to a log file beside the fold's model, in the run folder,
and the terminal keeps a bar with the epoch, the train loss, nnU-Net's pseudo Dice and the time
left, plus any line nnU-Net marks as a warning. ``--verbose`` (DEBUG on the ``sslmedsam2``
logger) brings nnU-Net's full stream back to the terminal.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from sslmedsam2.logs import DEPRECATIONS
from sslmedsam2.runtime import debugging

_WARNING_LINE = re.compile(r"\bwarning\b", re.IGNORECASE)


class _FoldStream(io.TextIOBase):
    """stdout during a fold: every line to the log, lines naming a warning also to the terminal."""

    def __init__(self, log_file: TextIO, label: str) -> None:
        self.log_file, self.label, self._pending = log_file, label, ""

    def write(self, text: str) -> int:
        self.log_file.write(text)
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            if _WARNING_LINE.search(line):
                tqdm.write(f"{self.label}: {line.strip()}", file=sys.stderr)
        return len(text)

    def flush(self) -> None:
        self.log_file.flush()


def _warning_router(log_file: TextIO, label: str):
    """``warnings.showwarning`` for a fold: all to the log, non-deprecations also to the terminal."""
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        log_file.write(text)
        if not issubclass(category, DEPRECATIONS):
            tqdm.write(f"{label}: {text.strip()}", file=sys.stderr)
    return show


@contextlib.contextmanager
def fold_output(log_path: Path, label: str) -> Iterator[None]:
    """Route a fold's stdout and Python warnings to ``log_path`` (unless verbose), line by line
    so that ``tail -f`` follows the training."""
    if debugging():
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8", buffering=1) as log_file, warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _warning_router(log_file, label)
        with contextlib.redirect_stdout(_FoldStream(log_file, label)):
            yield


def attach_epoch_bar(trainer: Any, label: str, show: bool) -> tqdm:
    """A bar advanced by ``trainer`` at the end of each epoch (nnU-Net's ``on_epoch_end``)."""
    bar = tqdm(total=trainer.num_epochs, desc=label, unit="epoch", file=sys.stderr,
               disable=not show or debugging(), leave=True, dynamic_ncols=True)
    finish_epoch = trainer.on_epoch_end

    def on_epoch_end() -> None:
        finish_epoch()
        bar.set_postfix(loss=f"{trainer.logger.get_value('train_losses', step=-1):.3f}",
                        pseudo_dice=f"{trainer.logger.get_value('ema_fg_dice', step=-1):.3f}",
                        refresh=False)
        bar.update(1)

    trainer.on_epoch_end = on_epoch_end
    return bar
