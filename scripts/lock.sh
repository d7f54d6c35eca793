#!/usr/bin/env bash
# Regenerate the hash locks in requirements/ from pyproject.toml's pins, for the images' and the
# development machines' platform: Linux x86_64 (glibc 2.28 or later), Python 3.11.
#
#   scripts/lock.sh              keep the locked versions that still satisfy pyproject
#   scripts/lock.sh --upgrade    move every unpinned dependency to its newest release
#
# uv (pinned below, in a throw-away venv) resolves from PyPI alone, whatever this machine's pip or
# uv configuration adds, so the hashes are PyPI's. It builds sam2's metadata (its setup.py imports
# torch), so the first run downloads torch (several GB) into uv's cache. check_lock.py says which
# lock serves which install; dev.lock (all extras) is resolved first and the others within it, so a
# package shared by two locks has one version in both.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m venv "$work/venv"
PIP_CONFIG_FILE=/dev/null "$work/venv/bin/pip" install -q --disable-pip-version-check \
    --index-url https://pypi.org/simple "uv==$UV_VERSION" packaging
unset UV_INDEX UV_EXTRA_INDEX_URL UV_FIND_LINKS UV_CONSTRAINT UV_OVERRIDE

# pyproject.toml's entries, one per line: pyproject KEY... (a path into the TOML tables).
pyproject() {
    "$PYTHON" -c 'import sys, tomllib
value = tomllib.load(open("pyproject.toml", "rb"))
for key in sys.argv[1:]:
    value = value[key]
print("\n".join(value))' "$@"
}
# pip, the build tools for the --no-build-isolation builds (pyproject's build-system) and
# packaging (for scripts/check_lock.py): part of every lock, and build.lock on their own.
build_tools() {
    echo pip
    pyproject build-system requires
    echo packaging
}

uv_compile() {  # uv_compile LOCK [uv option...] < requirements
    "$work/venv/bin/uv" --no-config pip compile --quiet --generate-hashes \
        --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
        --default-index https://pypi.org/simple --custom-compile-command scripts/lock.sh \
        -o "requirements/$1" "${@:2}" "${extra_options[@]}"
}

extra_options=("$@")
mkdir -p requirements
build_tools | uv_compile dev.lock pyproject.toml - --all-extras --no-emit-package sam2
build_tools | uv_compile train.lock pyproject.toml - --extra cluster --no-emit-package sam2 \
    -c requirements/dev.lock
build_tools | uv_compile base.lock pyproject.toml - --no-emit-package sam2 -c requirements/dev.lock
build_tools | uv_compile build.lock - -c requirements/dev.lock
# sam2 alone (--no-deps: its dependencies are in the other locks).
pyproject project dependencies | grep -E '^sam2\b' | uv_compile sam2.lock - --no-deps
"$work/venv/bin/python" scripts/check_lock.py
echo "requirements/*.lock written and checked against pyproject.toml; commit them together"
