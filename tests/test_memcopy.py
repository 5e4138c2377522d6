"""The environment that keeps large copies off glibc's slow `rep movsb` (dff_ros.memcopy)."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from dff_ros.launcher import start
from dff_ros.memcopy import NEVER, REP_MOVSB_THRESHOLD, glibc_tunables, node_env


def test_threshold_is_added_and_others_are_kept():
    assert glibc_tunables("") == f"{REP_MOVSB_THRESHOLD}={NEVER}"
    assert glibc_tunables("glibc.malloc.arena_max=2") == f"glibc.malloc.arena_max=2:{REP_MOVSB_THRESHOLD}={NEVER}"


def test_a_threshold_the_user_set_wins():
    mine = f"glibc.malloc.arena_max=2:{REP_MOVSB_THRESHOLD}=4096"
    assert glibc_tunables(mine) == mine
    assert node_env({"GLIBC_TUNABLES": mine}) == {"GLIBC_TUNABLES": mine}


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
    line = next(x for x in out.splitlines() if x.startswith(REP_MOVSB_THRESHOLD + ":"))
    assert int(line.split()[1], 16) == NEVER


def test_launcher_children_get_it(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    want = glibc_tunables("")
    check = f"import os, sys; sys.exit(0 if os.environ.get('GLIBC_TUNABLES') == {want!r} else 3)"
    proc = start([sys.executable, "-c", check], "child")
    assert proc.wait(timeout=30) == 0


def test_env_sh_exports_it():
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(["bash", "-c", f". {repo}/scripts/env.sh && printenv GLIBC_TUNABLES"],
                         env={k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == glibc_tunables("")
