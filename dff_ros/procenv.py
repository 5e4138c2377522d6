"""The environment a node process starts with: settings its libraries read when they load.

    python -m dff_ros.procenv     # export lines for a shell (scripts/env.sh)

GLIBC_TUNABLES keeps large copies fast (dff_ros/memcopy.py); MKL_CBWR and OMP_WAIT_POLICY make
results independent of the thread count and keep threads off busy cores (dff_ros/numerics.py).
A value already in the environment wins. No ROS, no torch.
"""
from __future__ import annotations

import os
import shlex
import sys

from dff_ros import memcopy, numerics


def node_env(environ=None) -> dict[str, str]:
    """The variables to add to a node process's environment."""
    environ = os.environ if environ is None else environ
    return {"GLIBC_TUNABLES": memcopy.glibc_tunables(environ.get("GLIBC_TUNABLES", "")),
            **numerics.settings(environ)}


if __name__ == "__main__":
    sys.stdout.write("".join(f"export {k}={shlex.quote(v)}\n" for k, v in node_env().items()))
