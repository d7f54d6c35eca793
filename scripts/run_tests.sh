#!/usr/bin/env bash
# Set up the environment if needed, then run the whole test suite (real nnU-Net training and
# prediction included). Extra arguments go to pytest. Exits non-zero on any failure, and also
# when no test ran at all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
    echo "no tests were collected: failing" >&2
    exit 1
fi
exit $status
