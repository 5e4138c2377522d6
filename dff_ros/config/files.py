"""The package's own config files and ``--set key=value`` overrides: what the launcher, the CLI
and the master share without importing ROS."""
from __future__ import annotations

from pathlib import Path

import yaml
from yaml.composer import ComposerError

MAX_CONFIG_BYTES = 1 << 20   # a model or pipeline YAML is a few kB
MAX_DEPTH = 32               # configs nest 3-4 levels


class ConfigLoader(yaml.SafeLoader):
    """YAML for configs: no aliases (a few hundred bytes of nested aliases expand to gigabytes)
    and bounded nesting (deep nesting ends in a RecursionError)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise ComposerError(None, None, f"aliases (*{event.anchor}) are not allowed in a config: "
                                "write the value out", event.start_mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text):
    """``text`` (a string or a stream) parsed by ConfigLoader; yaml.YAMLError if it is not fit."""
    return yaml.load(text, Loader=ConfigLoader)


def parse_set(items) -> dict:
    """``["key=value", ...]`` -> ``{key: value}``, each value read as YAML."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = load_yaml(v)
        except yaml.YAMLError as e:
            raise SystemExit(f"--set {k.strip()}: {getattr(e, 'problem', None) or e}") from None
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
