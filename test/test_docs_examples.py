"""The commands the README and docs show are valid as written: every launcher, master, `dff-ros
train` and `ros2 launch` line's settings load (a key, a value or a combination the config refuses,
such as `--train-set epochs=2` with the default 10 splits, fails here), the launch arguments exist,
and a classifier and the image demo shown together meet on one image topic."""
import ast
import re
import shlex
from pathlib import Path

import pytest

from dff_ros.config import load_model_config
from dff_ros.config.pipeline import load_pipeline_config
from dff_ros.config.files import parse_set

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_blocks():
    """(file, block lines) of every ```bash block, continuation lines joined, comments cut."""
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            text = re.sub(r"\\\n\s*", " ", block)
            lines = [shlex.split(line, comments=True) for line in text.splitlines()]
            yield doc.name, [words for words in lines if words]


def commands(*starts):
    out = []
    for name, block in shell_blocks():
        for words in block:
            joined = " ".join(words)
            if any(joined.startswith(s) for s in starts):
                out.append(pytest.param(words, id=f"{name}: {joined[:70]}"))
    return out


def option_values(words, flag):
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == flag]


@pytest.mark.parametrize("words", commands("python -m dff_ros.launcher", "python -m dff_ros.nodes.master",
                                           "bash scripts/run_mnist.sh"))
def test_launcher_and_master_examples_load(words):
    pipeline = (option_values(words, "--pipeline") or [str(REPO / "config" / "mnist_pipeline.yaml")])[0]
    sets = parse_set(option_values(words, "--set"))
    if option_values(words, "--servers"):
        sets["servers"] = int(option_values(words, "--servers")[0])
    cfg = load_pipeline_config(REPO / pipeline if not Path(pipeline).is_absolute() else pipeline, sets)
    load_model_config(cfg.model, parse_set(option_values(words, "--train-set")))


@pytest.mark.parametrize("words", commands("dff-ros train"))
def test_dff_ros_train_examples_load(words):
    load_model_config(REPO / words[2], parse_set(option_values(words, "--set")))


def launch_arguments(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ARGS":
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{path}: no ARGS")


@pytest.mark.parametrize("words", commands("ros2 launch dff_ros"))
def test_launch_examples_use_arguments_the_launch_file_has(words):
    launch_file = REPO / "launch" / words[3]
    assert launch_file.is_file(), words
    given = dict(w.split(":=", 1) for w in words[4:] if ":=" in w)
    assert set(given) <= launch_arguments(launch_file), (words, sorted(launch_arguments(launch_file)))
    if words[3] == "mnist_pipeline.launch.py":   # what the launch file hands the master, checked here
        sets = {k: v for k, v in given.items() if k not in ("role", "pipeline")}
        load_pipeline_config(REPO / "config" / "mnist_pipeline.yaml", parse_set(f"{k}={v}" for k, v in sets.items()))


def test_a_classifier_and_the_image_demo_shown_together_meet():
    pairs = 0
    for name, block in shell_blocks():
        nodes = {}
        for words in block:
            for node in ("classifier", "image_demo"):
                if f"dff_ros.nodes.{node}" in words:
                    remaps = [w.split(":=", 1)[1] for w in words if w.startswith("image:=")]
                    nodes[node] = remaps[0] if remaps else "image"
        if len(nodes) == 2:
            pairs += 1
            assert nodes["classifier"] == nodes["image_demo"], (name, nodes)
    assert pairs >= 1
