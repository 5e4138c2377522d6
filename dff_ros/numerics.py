"""Results that do not depend on the thread count, and threads that do not spin on a busy core.

Both are library settings read from the environment when the library starts, so `dff_ros`
sets their defaults on import (before torch loads, in every process that imports dff_ros
first), `dff_ros.procenv` puts them in a node process's environment, and a value the user set
wins.

``MKL_CBWR=AUTO,STRICT``. torch's float32 matmuls are MKL's sgemm. How MKL splits a product over
threads, and so the order in which it sums, depends on the CPU: on Intel Xeon (AVX-512) 1 and 2
threads gave different last bits, which training amplifies (a small run: 76.74 vs 75.07 %),
while on AMD EPYC they happened to agree. oneMKL's *strict* conditional numerical
reproducibility mode makes ?gemm bitwise equal for any thread count on its AVX2 and AVX-512
branches (oneMKL developer guide, "Reproducibility Conditions"); AUTO keeps the CPU's own
branch. The FF code's other ops (elementwise, per-row reductions) are torch's own kernels,
which split work into fixed-size pieces whatever the thread count: the same on every x86 CPU.

``OMP_WAIT_POLICY=PASSIVE``. torch's OpenMP workers spin between parallel regions by default.
When other processes hold the cores (a robot's other nodes, the other FF servers), a spinning
worker waits for a descheduled one: the 2-thread trainer ran 6x slower beside two busy
processes here, and 10-24x on an Intel machine. Passive workers sleep instead
(bench/threads_under_load.py measures both).
"""
from __future__ import annotations

import ctypes
import os
import warnings

DEFAULTS = {"MKL_CBWR": "AUTO,STRICT", "OMP_WAIT_POLICY": "PASSIVE"}

# oneMKL's mkl_cbwr_get / mkl_cbwr_set values (mkl_service.h)
_CBWR_ALL, _CBWR_AUTO, _CBWR_STRICT = -1, 2, 0x10000


def set_defaults(environ=None) -> None:
    """Put the defaults in ``environ`` (os.environ) where the user set nothing."""
    environ = os.environ if environ is None else environ
    for key, value in DEFAULTS.items():
        environ.setdefault(key, value)


def settings(environ=None) -> dict[str, str]:
    """These settings for a child process's environment: the user's own, else the defaults."""
    environ = os.environ if environ is None else environ
    return {key: environ.get(key) or value for key, value in DEFAULTS.items()}


def _mkl():
    """torch's MKL service functions, or None where torch's BLAS is not MKL (e.g. aarch64)."""
    import torch

    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        lib = ctypes.CDLL(path)
        get, put = lib.mkl_serv_cbwr_get, lib.mkl_serv_cbwr_set
    except (OSError, AttributeError):
        return None
    get.argtypes = put.argtypes = [ctypes.c_int]
    return get, put


def gemm_is_thread_count_independent() -> bool | None:
    """True when MKL runs in strict CNR mode; None when torch's BLAS is not MKL."""
    mkl = _mkl()
    return None if mkl is None else bool(mkl[0](_CBWR_ALL) & _CBWR_STRICT)


def ensure_strict_gemm() -> bool | None:
    """Switch MKL to AUTO,STRICT when nobody chose a mode and MKL has not computed yet; warn when
    that is too late (torch used before dff_ros was imported). Returns the mode's state."""
    mkl = _mkl()
    if mkl is None:
        return None
    get, put = mkl
    if get(_CBWR_ALL) & _CBWR_STRICT:
        return True
    if os.environ.get("MKL_CBWR", DEFAULTS["MKL_CBWR"]) != DEFAULTS["MKL_CBWR"]:
        return False   # the user's choice
    if put(_CBWR_AUTO | _CBWR_STRICT) == 0:
        return True
    warnings.warn("matmul results may depend on the torch thread count: MKL ran before dff_ros could "
                  "set its strict reproducible mode; import dff_ros before torch, or export "
                  "MKL_CBWR=AUTO,STRICT", RuntimeWarning, stacklevel=2)
    return False
