"""Device and thread choices, made once per process and passed down explicitly."""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sslmedsam2.errors import UsageError

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may use (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


#: Where torch, matplotlib, triton and other XDG-following libraries cache things.
CACHE_VARIABLES = ("MPLCONFIGDIR", "TORCH_HOME", "TRITON_CACHE_DIR", "XDG_CACHE_HOME")


def private_caches() -> Path | None:
    """Caches in a temp folder when HOME cannot be written (read-only containers run as a
    stranger uid): libraries would otherwise warn, fail, or write next to the inputs. Variables
    the user set win. Returns the folder (removed at exit), or None when HOME is writable."""
    home = os.environ.get("HOME", "")
    if home and os.access(home, os.W_OK):
        return None
    folder = Path(tempfile.mkdtemp(prefix="sslmedsam2-cache-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for name in CACHE_VARIABLES:
        os.environ.setdefault(name, str(folder / name.lower()))
    log.info("HOME (%s) is not writable: caches go to %s", home or "unset", folder)
    return folder


def resolve_device(name: str = "auto"):
    """``auto`` -> CUDA when a GPU is visible, else CPU; an explicit ``cuda`` without GPU is an error."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cpu" and os.path.exists("/dev/nvidia0"):
            log.warning("an NVIDIA GPU is present but torch %s (CUDA %s) cannot use it: the driver "
                        "is probably older than this CUDA needs (CUDA 13 needs driver R580 or "
                        "later); running on CPU", torch.__version__, torch.version.cuda)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def precision_for(device_type: str, bf16_supported: bool) -> str:
    """The float format a model runs in on this device: bf16 autocast on GPUs that support it
    (Ampere and later), fp16 autocast on older GPUs (the T4, Grand Challenge's default, has no
    bf16), fp32 on CPU (CPU autocast is slow and changes the numbers)."""
    if device_type != "cuda":
        return "fp32"
    return "bf16" if bf16_supported else "fp16"


@functools.lru_cache(maxsize=None)
def device_precision(device) -> str:
    """``precision_for`` of a torch device, asking the GPU what it supports (once per device:
    SAM2 asks before every propagation)."""
    import torch

    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision_for(device.type, supported)


def autocast(device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``precision`` on ``device`` (``fp32``: none)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def seed_everything(seed: int) -> None:
    """nnU-Net draws from Python's, NumPy's and torch's global generators."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_threads(threads: int | None) -> int:
    """Use every CPU we are allowed (or ``threads``) for torch's intra-op pool."""
    import torch

    count = threads or available_cpus()
    torch.set_num_threads(count)
    return count


def limit_threads(count: int) -> None:
    """A worker's share of the CPUs: torch's and ITK's (registration) thread pools both."""
    import SimpleITK as sitk

    configure_threads(count)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)


def debugging() -> bool:
    """The CLI's ``--verbose``: DEBUG on our logger (third-party output is then shown too)."""
    return logging.getLogger("sslmedsam2").isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """nnU-Net prints banners and notices to stdout; keep stdout for results unless debugging."""
    if debugging():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


@contextlib.contextmanager
def scoped_environ(**values: str) -> Iterator[None]:
    """Set environment variables for a block only (nnU-Net reads its settings from there)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
