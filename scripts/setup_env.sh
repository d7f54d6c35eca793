#!/usr/bin/env bash
# Create or update ./.venv with the pinned stack. Idempotent: does nothing when the pins and this
# script are unchanged since the last successful run.
#
# Order matters: torch first (PyPI's 2.14.1 build, which also runs on CPU), then sam2 built
# against it without CUDA kernels and without an isolated build env (which would pull torch again),
# then this package and its remaining pins.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${VENV:-.venv}
STAMP="$VENV/.sslmedsam2-setup"
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "environment $VENV is up to date"
    exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
# This machine kind's pip config lists local indexes that print a warning per missing package.
pip() {
    "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2)
}

echo "installing into $VENV (torch, sam2, nnU-Net: a few minutes the first time)"
pip install -q --upgrade pip setuptools wheel
pip install -q torch==2.14.1 torchvision==0.29.1
SAM2_BUILD_CUDA=0 pip install -q --no-build-isolation sam2==1.1.0
pip install -q -e ".[test]"
"$VENV/bin/python" -c "import torch, sam2, nnunetv2, SimpleITK, grand_challenge_metrics, sslmedsam2"
echo "$want" > "$STAMP"
echo "environment ready: $VENV"
