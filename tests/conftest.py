"""Shared fixtures: real images with awkward geometry, and a real (tiny) trained nnU-Net."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sslmedsam2.datasets.example import ExampleConfig, make_example
from sslmedsam2.registration.syn import unpinned_environment
from sslmedsam2.training.supervised import PROFILES, TrainingConfig, train_model

REPO = Path(__file__).resolve().parents[1]
SEED_DIR = REPO / "sslmedsam2" / "data" / "abdomen-mr"


@pytest.fixture(scope="session")
def real_mr() -> sitk.Image:
    return sitk.ReadImage(str(SEED_DIR / "image.nii.gz"))


def reoriented(image: sitk.Image, kind: str) -> sitk.Image:
    """The same voxels on a flipped, oblique or anisotropic grid: geometry tests need all three."""
    out = sitk.Image(image)
    if kind == "flipped":
        out.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        out.SetOrigin((250.0, 180.0, -40.0))
    elif kind == "oblique":
        angle = np.deg2rad(17.0)
        c, s = np.cos(angle), np.sin(angle)
        rotation = np.array([[c, -s, 0], [s * c, c * c, -s], [s * s, s * c, c]])
        q, _ = np.linalg.qr(rotation)
        out.SetDirection(tuple(q.flatten()))
        out.SetOrigin((-12.5, 33.25, 101.0))
    elif kind == "anisotropic":
        out.SetSpacing((0.71, 0.93, 4.4))
    else:
        raise ValueError(kind)
    return out


GEOMETRIES = ("flipped", "oblique", "anisotropic")


@pytest.fixture(scope="session")
def example_dataset(tmp_path_factory):
    """A small CARE-like dataset: 3 labelled training cases (one per vendor), 2 test cases."""
    return make_example(ExampleConfig(out_dir=tmp_path_factory.mktemp("example"), cases=3,
                                      test_cases=2, labelled_per_vendor=1, seed=7), progress=False)


@pytest.fixture(scope="session")
def trained_weights(tmp_path_factory, example_dataset) -> Path:
    """A real nnU-Net trained for a few iterations (mechanics, not quality), in the weights layout."""
    weights = tmp_path_factory.mktemp("weights")
    train_model(TrainingConfig(data_dir=example_dataset.train_dir, weights_dir=weights,
                               work_dir=tmp_path_factory.mktemp("nnunet-work"),
                               profile=PROFILES["tiny-test"], device="cpu"))
    return weights


def run_process(*args: str | Path, env: dict[str, str] | None = None,
                prefix: list[str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run process.py the way the container does (a separate Python process); ``cwd`` None: this
    one (a test of defaults that depend on the working directory passes another). ITK's thread
    count is left for process.py to choose, as in a container."""
    command = [*(prefix or []), sys.executable, str(REPO / "process.py"), *map(str, args)]
    full_env = {**unpinned_environment(), "SSLMEDSAM2_WEIGHTS": "", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=600,
                          cwd=cwd)


def auto_device() -> tuple[str, str]:
    """What ``--device auto`` gives nnU-Net on this host: (device, precision) as the summary
    records them. Tests of the auto path assert this, so they hold on GPU and CPU hosts alike."""
    import torch

    return ("cuda", "fp16") if torch.cuda.is_available() else ("cpu", "fp32")


#: the start of the reason the container-contract test gives when it cannot run here
CONTRACT_NOT_TESTED = "CONTAINER CONTRACT NOT TESTED"


def pytest_terminal_summary(terminalreporter) -> None:
    """Shout an untested container contract at the end of the run (``-ra`` only lists it among
    the skips): nothing else checks the offline, read-only, non-root run the platforms do."""
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if CONTRACT_NOT_TESTED in reason:
            terminalreporter.write_sep("!", reason.removeprefix("Skipped: "), red=True, bold=True)


def copy_case_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
