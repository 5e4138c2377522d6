"""The package's own config files and ``--set key=value`` overrides: what the launcher, the CLI
and the master share without importing ROS."""
from __future__ import annotations

from pathlib import Path

import yaml


def parse_set(items) -> dict:
    """``["key=value", ...]`` -> ``{key: value}``, each value read as YAML."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def config_file(name: str) -> str:
    """A file of the package's config/: the repo's when running from a checkout, else share/dff_ros."""
    here = Path(__file__).resolve().parents[2] / "config" / name
    if here.exists():
        return str(here)
    from ament_index_python.packages import get_package_share_directory
    return str(Path(get_package_share_directory("dff_ros")) / "config" / name)


def default_pipeline() -> str:
    return config_file("mnist_pipeline.yaml")
