# sslmedsam2 inference container (CARE-LiSeg test phase and Grand Challenge algorithm).
#
#   ./build.sh      build (docker build -t sslmedsam2:latest .)
#   ./test.sh       run it the way the organisers do and check the outputs against ground truth
#   ./export.sh     sslmedsam2.tar.gz (the image) + model.tar.gz (weights/ for /opt/ml/model)
#
# Base image: python:3.11-slim-bookworm, pinned by tag. Not an nvidia/cuda image because PyPI's
# torch/torchvision Linux wheels bundle their own CUDA runtime, cuDNN, cuBLAS... (the nvidia-* wheels,
# CUDA 13 for torch 2.14.1): the image only needs glibc, and the host's NVIDIA driver is mounted in by
# the NVIDIA container toolkit (`docker run --gpus all`). A CUDA base would add gigabytes of
# duplicate libraries. The same wheels run on CPU, so one image serves both. Python 3.11 matches the
# development venv. For a bit-for-bit rebuild, replace the tag by its digest
# (python:3.11-slim-bookworm@sha256:..., from `docker images --digests` after a build).
# Host requirement for the GPU: a driver new enough for CUDA 13 (R580 or later); older drivers fall
# back to CPU (torch.cuda.is_available() is False) rather than fail.

# ---------------------------------------------------------------------------------------------------
# Stage 1: build a virtual environment in /opt/venv. Compilers live only in this stage.
FROM python:3.11-slim-bookworm AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Every dependency ships manylinux wheels today and sam2 is built without its CUDA extension, so
# nothing is compiled in practice; build-essential is here so that a dependency that falls back to
# an sdist still builds, and it never reaches the final image. (12.9 is bookworm's only version.)
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH="/opt/venv/bin:$PATH"

# Everything is installed from the hash locks in requirements/ (scripts/lock.sh writes them from
# pyproject.toml's pins): pip refuses any file whose sha256 they do not list. Where a step names
# packages, the lock (-c) gives their versions and hashes. build.lock goes first, with -r: the base
# image's pip cannot read hashes from a constraints file; the locked pip can.
WORKDIR /tmp/build
COPY requirements/ ./requirements/
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --require-hashes -r requirements/build.lock

# 1. torch first: sam2's setup.py imports torch, and the versions must be the pinned ones.
# 2. sam2 is an sdist. --no-build-isolation builds it against the torch above (otherwise pip pulls a
#    second torch into a throw-away build env); SAM2_BUILD_CUDA=0 skips its optional CUDA extension
#    (only used for mask hole filling; sam2 warns and carries on without it). --no-deps: its
#    dependencies come with the rest of the lock in step 3.
RUN pip install --no-cache-dir --require-hashes -c requirements/base.lock \
        torch==2.14.1 torchvision==0.29.1 \
    && SAM2_BUILD_CUDA=0 pip install --no-cache-dir --require-hashes --no-deps --no-build-isolation \
        -c requirements/sam2.lock sam2==1.1.0

# 3. The rest of the lock, once scripts/check_lock.py has found the locks in agreement with
#    pyproject.toml (else one line names the stale lock and the fix). A layer of its own: editing
#    the code does not reinstall them.
COPY pyproject.toml ./
COPY scripts/check_lock.py ./scripts/
RUN python scripts/check_lock.py \
    && pip install --no-cache-dir --require-hashes -r requirements/base.lock

# 4. The package itself, without its dependencies (all installed above) and without build isolation
#    (setuptools and wheel come from the lock). README.md* (a glob) because pyproject names it as
#    the readme but a missing README must not break the build.
COPY pyproject.toml README.md* ./
COPY sslmedsam2/ ./sslmedsam2/
#    The import check runs isolated (-I: not from ./sslmedsam2) so it tests what was installed.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && python -I -c "import sslmedsam2, sam2, nnunetv2, SimpleITK"

# ---------------------------------------------------------------------------------------------------
# Stage 2: the runtime image: same base, the venv, the entrypoint, the weights. No compilers.
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="sslmedsam2" \
      org.opencontainers.image.description="Liver segmentation in MRI (SAM2 few-shot pseudo-labels + nnU-Net v2), CARE-LiSeg / Grand Challenge container"

# - nnUNet_compile=f: no torch.compile (slow warm-up, needs a compiler and a writable cache).
# - HF_HUB_OFFLINE=1: nothing is downloaded at run time; the container runs with --network none.
# - The root file system may be read-only (test.sh runs it so): caches go to /tmp, no .pyc writes.
# - NVIDIA_*: let the legacy `--runtime=nvidia` expose the GPU too (`--gpus all` sets them itself).
# - No SSLMEDSAM2_WEIGHTS here on purpose: process.py then uses /opt/ml/model when Grand Challenge
#   mounts one, else the weights baked into /opt/app/weights (the working directory's ./weights).
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    nnUNet_compile=f \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/torch \
    HF_HUB_OFFLINE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Grand Challenge runs algorithms as a non-root user; uid/gid 1000 as in its templates and test.sh.
RUN groupadd --gid 1000 user \
    && useradd --uid 1000 --gid user --no-log-init --create-home --shell /bin/bash user

# The package is installed in the venv (code + package data); only the entrypoint script is copied
# beside it. Everything stays root-owned: the user can read it, not change it.
COPY --from=builder /opt/venv /opt/venv
WORKDIR /opt/app
COPY process.py ./
# Baked-in weights (may be just weights/README.md: then mount them at /opt/ml/model instead).
COPY weights/ ./weights/

# Numeric (= user:user) so that a platform can tell it is non-root without reading /etc/passwd.
USER 1000:1000

ENTRYPOINT ["python", "/opt/app/process.py"]
