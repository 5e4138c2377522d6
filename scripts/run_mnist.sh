#!/usr/bin/env bash
# Set up (if needed) and run the main job: train the default MNIST model and report accuracy.
# Extra arguments go to `dff-ros train` (e.g. --set epochs=5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${DFF_VENV:-$PWD/.venv}
if [ -z "${DFF_DATA_ROOT:-}" ] && [ -d ../shared/data/MNIST/raw ]; then
  export DFF_DATA_ROOT=$PWD/../shared/data
fi
exec "$VENV/bin/dff-ros" train config/models/mnist_default.yaml "$@"
