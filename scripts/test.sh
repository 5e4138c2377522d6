#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${DFF_VENV:-$PWD/.venv}
exec "$VENV/bin/python" -m pytest -q "$@"
