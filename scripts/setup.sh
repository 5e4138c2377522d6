#!/usr/bin/env bash
# Create/refresh the project's virtual environment (idempotent; fast when already done).
#   DFF_VENV  venv folder (default: .venv in the repo)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DFF_VENV:-$PWD/.venv}
PY=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.dff_ros_setup"
want=$(cat scripts/setup.sh setup.py | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing into $VENV (torch CPU 2.13.0, numpy, pyyaml, pytest)" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
  # torch==2.13.0 exactly: this machine has its CPU wheel; any other spec pulls GBs of CUDA.
  "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0 numpy pyyaml pytest
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
