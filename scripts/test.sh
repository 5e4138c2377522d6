#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: the FF core, and the ROS 2 nodes as real
# processes over DDS (each test in its own ROS_DOMAIN_ID). This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
exec python -m pytest -q "$@"
