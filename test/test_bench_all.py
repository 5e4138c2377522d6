"""bench/all.py names real benches and only flags they take (checked against their sources, so
a renamed option fails here rather than hours into a run)."""
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import all as bench_all  # noqa: E402


def test_every_flag_is_one_its_bench_takes():
    for name, cmd in bench_all.commands(quick=True, base_tree="/x") + bench_all.commands(quick=False, base_tree=None):
        script = Path(cmd[1])
        assert script.exists(), name
        takes = set(re.findall(r'add_argument\(\s*"(--[a-z-]+)"', script.read_text()))
        given = {a for a in cmd[2:] if a.startswith("--")}
        assert given <= takes, (name, given - takes)


def test_dry_run_lists_them_and_unknown_names_are_refused(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH / "all.py"), "--quick", "--dry-run", "--results", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.count("[bench/all]") == len(bench_all.BENCHES), out.stdout
    bad = subprocess.run([sys.executable, str(BENCH / "all.py"), "--only", "nope", "--dry-run"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no bench named nope" in bad.stderr
