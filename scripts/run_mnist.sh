#!/usr/bin/env bash
# Set up (if needed) and run the main job: the MNIST pipeline from config/mnist_pipeline.yaml,
# a master and 2 servers as separate ROS 2 processes on this machine. Prints progress, test
# accuracy, the run summary and where every node put its weights.
# Extra arguments go to the launcher (e.g. --servers 3, --set train=false, --train-set epochs=2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
if [ -z "${DFF_DATA_ROOT:-}" ] && [ -d ../shared/data/MNIST/raw ]; then
  export DFF_DATA_ROOT=$PWD/../shared/data
fi
exec python -m dff_ros.launcher --pipeline config/mnist_pipeline.yaml "$@"
