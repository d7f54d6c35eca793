#!/usr/bin/env bash
# Create or update ./.venv with the locked stack. Idempotent: does nothing when the pins, the locks
# and this script are unchanged since the last successful run.
#
# Everything comes from the hash locks in requirements/ (scripts/lock.sh writes them from
# pyproject.toml; pip refuses any file whose sha256 they do not list). Order matters: pip and the
# build tools first (build.lock); then, once the locks are checked against pyproject, dev.lock:
# torch (PyPI's 2.14.1 build, which also runs on CPU) and every other dependency; then sam2 built
# against that torch without CUDA kernels and without an isolated build env (which would pull
# torch again); then this package, whose dependencies are all in place by then.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${VENV:-.venv}
STAMP="$VENV/.sslmedsam2-setup"
want=$(cat pyproject.toml scripts/setup_env.sh requirements/*.lock | sha256sum | cut -c1-16)

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
pip install -q --require-hashes -r requirements/build.lock
# A lock that disagrees with pyproject.toml: one line naming it and the fix, before the big install.
"$VENV/bin/python" scripts/check_lock.py
pip install -q --require-hashes -r requirements/dev.lock
SAM2_BUILD_CUDA=0 pip install -q --require-hashes --no-deps --no-build-isolation -r requirements/sam2.lock
# setuptools notices about editable installs are not for users of this script
PYTHONWARNINGS=ignore pip install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, sam2, nnunetv2, SimpleITK, grand_challenge_metrics, sslmedsam2"
echo "$want" > "$STAMP"
echo "environment ready: $VENV"
