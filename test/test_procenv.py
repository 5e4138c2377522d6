"""The environment a node starts with (dff_ros.procenv): large copies off glibc's slow
`rep movsb` (dff_ros.memcopy); matmuls whose bits do not depend on the thread count and OpenMP
workers that do not spin (dff_ros.numerics)."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import torch

from dff_ros import numerics
from dff_ros.launcher import start
from dff_ros.memcopy import NEVER, REP_MOVSB_THRESHOLD, TUNABLES, glibc_tunables
from dff_ros.procenv import node_env

CLEAN = {k: v for k, v in os.environ.items() if k not in numerics.DEFAULTS}


OURS = ":".join(f"{k}={v}" for k, v in TUNABLES.items())


def test_threshold_is_added_and_others_are_kept():
    assert glibc_tunables("") == OURS
    assert f"{REP_MOVSB_THRESHOLD}={NEVER}" in OURS.split(":")
    assert glibc_tunables("glibc.malloc.arena_max=2") == f"glibc.malloc.arena_max=2:{OURS}"


def test_a_threshold_the_user_set_wins():
    mine = f"glibc.malloc.arena_max=2:{REP_MOVSB_THRESHOLD}=4096:glibc.malloc.trim_threshold=0"
    assert glibc_tunables(mine) == mine + ":glibc.malloc.mmap_threshold=33554432"
    assert node_env({"GLIBC_TUNABLES": mine})["GLIBC_TUNABLES"] == glibc_tunables(mine)


def _loader() -> str | None:
    for p in ("/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"):
        if Path(p).exists():
            return p
    return None


@pytest.mark.skipif(platform.machine() != "x86_64" or _loader() is None, reason="an x86-64 glibc tunable")
def test_glibc_takes_the_value():
    """ld.so reads GLIBC_TUNABLES and clamps out-of-range values to its bounds: it must keep ours."""
    out = subprocess.run([_loader(), "--list-tunables"], env={"GLIBC_TUNABLES": glibc_tunables("")},
                         capture_output=True, text=True, check=True).stdout
    for name, value in TUNABLES.items():
        line = next(x for x in out.splitlines() if x.startswith(name + ":"))
        assert int(line.split()[1], 16) == value, line


def test_launcher_children_get_it(monkeypatch):
    for k in ("GLIBC_TUNABLES", *numerics.DEFAULTS):
        monkeypatch.delenv(k, raising=False)
    want = {"GLIBC_TUNABLES": glibc_tunables(""), **numerics.DEFAULTS}
    check = f"import os, sys; sys.exit(0 if all(os.environ.get(k) == v for k, v in {want!r}.items()) else 3)"
    proc = start([sys.executable, "-c", check], "child")
    assert proc.wait(timeout=30) == 0


def test_env_sh_exports_it():
    repo = Path(__file__).resolve().parents[1]
    names = ("GLIBC_TUNABLES", *numerics.DEFAULTS)
    out = subprocess.run(["bash", "-c", f". {repo}/scripts/env.sh && printenv {' '.join(names)}"],
                         env={k: v for k, v in CLEAN.items() if k != "GLIBC_TUNABLES"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [glibc_tunables(""), *numerics.DEFAULTS.values()]


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**CLEAN, **env}, capture_output=True, text=True,
                          timeout=120)


def test_importing_dff_ros_sets_the_defaults_and_keeps_the_users():
    code = "import os, dff_ros; print(os.environ['MKL_CBWR'], os.environ['OMP_WAIT_POLICY'])"
    assert _python(code).stdout.split() == ["AUTO,STRICT", "PASSIVE"]
    assert _python(code, MKL_CBWR="OFF", OMP_WAIT_POLICY="ACTIVE").stdout.split() == ["OFF", "ACTIVE"]


needs_mkl = pytest.mark.skipif(numerics.gemm_is_thread_count_independent() is None,
                               reason="torch's BLAS here is not MKL (strict CNR is an MKL mode)")


@needs_mkl
def test_mkl_runs_strict_unless_the_user_chose_otherwise():
    code = ("import dff_ros.ff, torch; from dff_ros.numerics import gemm_is_thread_count_independent as g; "
            "torch.ones(64, 64) @ torch.ones(64, 64); print(g())")
    assert _python(code).stdout.split() == ["True"]
    assert _python(code, MKL_CBWR="AUTO").stdout.split() == ["False"]


@needs_mkl
def test_torch_used_before_dff_ros_is_switched_or_warned():
    """MKL takes a mode until its first product; after that dff_ros can only say so."""
    late = _python("import torch; torch.ones(64, 64) @ torch.ones(64, 64); import dff_ros.ff")
    assert late.returncode == 0 and "matmul results may depend on the torch thread count" in late.stderr
    early = _python("import torch; import dff_ros.ff; from dff_ros.numerics import gemm_is_thread_count_independent "
                    "as g; print(g())")
    assert early.stdout.split() == ["True"] and "Warning" not in early.stderr


def test_this_process_runs_strict():
    assert numerics.gemm_is_thread_count_independent() in (True, None)


@pytest.mark.parametrize("rows", [64, 1000])
def test_the_layers_products_have_the_same_bits_for_1_and_2_threads(rows):
    """Forward and both backward products of an FF layer's minibatch and of a pipeline chunk."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, 784, generator=g), torch.randn(1000, 784, generator=g)
    dy = torch.randn(rows, 1000, generator=g)
    out = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out.append((torch.nn.functional.linear(x, w), dy.t() @ x, dy @ w))
    for a, b in zip(*out):
        assert torch.equal(a, b)
