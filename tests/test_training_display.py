"""The training display: nnU-Net's stream in a log file beside the model, a progress bar and
warnings on the terminal, everything back with --verbose."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from sslmedsam2.logs import FILE_ONLY, ConsoleFilter, run_log
from sslmedsam2.supports import Support
from sslmedsam2.training.display import fold_output
from sslmedsam2.training.supervised import PROFILES, fit_nnunet

ROOT = Path(__file__).resolve().parents[1]


def _nnunet_like_output() -> None:
    print("2026-12-01 10:00:00: Epoch 3")
    print("2026-12-01 10:00:01: train_loss -0.41")
    print("WARNING: the plans ask for a patch larger than the image")
    warnings.warn("torch.jit.interface is deprecated", FutureWarning)
    warnings.warn("spacing looks odd", UserWarning)


def test_fold_output_sends_the_stream_to_the_log_and_warnings_to_the_terminal(tmp_path, capsys):
    log_path = tmp_path / "round1" / "fold_all.log"
    with fold_output(log_path, "T2 round1 fold all"):
        _nnunet_like_output()
    captured = capsys.readouterr()
    logged = log_path.read_text()
    for line in ("Epoch 3", "train_loss -0.41", "patch larger", "torch.jit.interface", "spacing"):
        assert line in logged, line
    assert "Epoch 3" not in captured.out + captured.err
    assert "train_loss" not in captured.out + captured.err
    assert "T2 round1 fold all: WARNING: the plans ask" in captured.err
    assert "spacing looks odd" in captured.err
    assert "torch.jit.interface" not in captured.err  # a deprecation nobody here can act on


def test_verbose_brings_the_whole_stream_back(tmp_path, capsys):
    ours = logging.getLogger("sslmedsam2")
    level = ours.level
    ours.setLevel(logging.DEBUG)
    try:
        with fold_output(tmp_path / "fold_0.log", "fold 0"):
            print("2026-12-01 10:00:00: Epoch 3")
    finally:
        ours.setLevel(level)
    assert "Epoch 3" in capsys.readouterr().out
    assert not (tmp_path / "fold_0.log").exists()


def test_console_filter_keeps_deprecations_and_file_only_lines_in_the_run_log(tmp_path):
    console = io.StringIO()
    handler = logging.StreamHandler(console)
    handler.addFilter(ConsoleFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    # what logging.captureWarnings turns a warning into (the CLI turns it on for the process)
    captured = logging.getLogger("py.warnings")
    try:
        with run_log(tmp_path / "train.log"):
            for message, category in (("pkg_resources is deprecated", DeprecationWarning),
                                      ("mask has holes", UserWarning)):
                captured.warning("%s", warnings.formatwarning(message, category, "lib.py", 1))
            logging.getLogger("sslmedsam2.test").warning("fold all trained in 9 s", extra=FILE_ONLY)
    finally:
        root.removeHandler(handler)
    logged = (tmp_path / "train.log").read_text()
    assert "pkg_resources is deprecated" in logged and "mask has holes" in logged
    assert "fold all trained in 9 s" in logged
    assert "mask has holes" in console.getvalue()
    assert "pkg_resources" not in console.getvalue() and "trained in" not in console.getvalue()


def test_a_real_fold_shows_one_bar_and_logs_every_epoch(tmp_path, capsys, example_dataset):
    cases = [Support(c.case_id, c.images["GED4"], c.ground_truth["GED4"], c.vendor)
             for c in example_dataset.cases if c.labelled]
    profile = PROFILES["tiny-test"]
    fit_nnunet(cases, tmp_path / "nnunet", profile, "GED4", 501, torch.device("cpu"), 1, seed=3,
               label="GED4 round1")
    captured = capsys.readouterr()
    logged = (tmp_path / "nnunet" / "fold_all.log").read_text()
    for epoch in range(profile.epochs):
        assert f"Epoch {epoch}" in logged
    assert "train_loss" in logged and "Pseudo dice" in logged
    assert "train_loss" not in captured.out + captured.err
    assert "GED4 round1 fold all" in captured.err
    assert f"{profile.epochs}/{profile.epochs}" in captured.err  # the bar reached its end
    assert "pseudo_dice=" in captured.err


def test_train_command_output_is_short_and_the_run_log_complete(tmp_path, example_dataset):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "sslmedsam2", "train", "--data", str(example_dataset.train_dir),
         "--engine", "none", "--profile", "tiny-test", "--device", "cpu", "--run", str(run),
         "--weights", str(tmp_path / "weights")],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "default"},
        timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    terminal = result.stdout + result.stderr
    assert "Epoch time" not in terminal and "FutureWarning" not in terminal
    assert len(terminal.splitlines()) < 40, terminal
    assert "semi-supervised run finished" in (run / "train.log").read_text()
    fold_logs = list(run.rglob("fold_all.log"))
    assert fold_logs and "Epoch time" in fold_logs[0].read_text()
