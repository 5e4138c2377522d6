"""``dff-ros status | export | delete`` against real servers over DDS: a model trained on two
servers, each with its own weights dir (two robots), is listed, exported into one file that
``dff-ros eval`` scores like the run did, and deleted."""
import json
import re
import subprocess
import sys

import pytest

from rosutil import FOLDER, REPO, Client, Proc, ros_env, start_server, write_pipeline

from bad_inputs import TRAVERSAL_NAMES, create_request, spec_msg

from dff_ros.srv import CreateLayers, FetchParameters


def cli(env, *args, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "dff_ros.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture
def trained(tmp_path, data_root):
    """Two servers (weights in w1/, w2/) that trained 'pipe test' with a master (head in weights/)."""
    env = ros_env()
    pipeline = write_pipeline(tmp_path, data_root, epochs=2, splits=1, train_subset=3000)
    servers = [start_server(env, tmp_path, f"server_{i}", tmp_path / f"w{i}") for i in (1, 2)]
    master = Proc(["-m", "dff_ros.nodes.master", "--pipeline", str(pipeline), "--no-progress"], env,
                  tmp_path / "master.log")
    try:
        assert master.p.wait(180) == 0, master.output()
        summary = json.loads(open(re.search(r"\[dff_master\]: summary: (\S+)", master.output()).group(1)).read())
        yield env, pipeline, summary
    finally:
        master.stop()
        for s in servers:
            s.stop()


def test_status_export_delete(trained, tmp_path, data_root):
    env, pipeline, summary = trained
    client = Client(env)
    try:   # something hosted right now, for status to show
        res = client.call(CreateLayers, "/server_2/create_layers", create_request([spec_msg(model="hosted")],
                                                                                   model="hosted", run_id="r7"))
        assert res.success, res.message
        # export reads only weights files, by plain names in the model's folder
        for bad in ["../../../etc/passwd", "layer0-FFDense-xyz.pt", "x.pt", "head-0123456789ab.pt\n", *TRAVERSAL_NAMES]:
            got = client.call(FetchParameters, "/server_1/fetch_parameters",
                              FetchParameters.Request(model="pipe test", part=0, file=bad))
            assert not got.success and "not a weights file name" in got.message, (bad, got.message)
    finally:
        client.close()

    rc, out = cli(env, "status", "--json", "--servers", "2", "--pipeline", str(pipeline))
    assert rc == 0, out
    status = json.loads(out[out.index("{"):])
    assert [s["server"] for s in status["servers"]] == ["server_1", "server_2"], status
    by_name = {s["server"]: s for s in status["servers"]}
    saved = {s: sorted(f["file"].split("-")[0] for f in by_name[s]["saved"]) for s in by_name}
    assert saved == {"server_1": [f"{FOLDER}/layer0"], "server_2": [f"{FOLDER}/layer1"]}, saved
    assert by_name["server_1"]["weights_dir"] == str(tmp_path / "w1")
    hosted = by_name["server_2"]["layers"]
    assert [(l["model"], l["run_id"], l["index"], l["phase"]) for l in hosted] == [("hosted", "r7", 0, "created")]
    rc, text = cli(env, "status", "--servers", "2", "--pipeline", str(pipeline))
    assert rc == 0 and "hosts  hosted run r7 layer 0 FFDense 784->50: created" in text, text
    assert f"saved  {FOLDER}/layer1-FFDense-" in text and "2 server(s)" in text, text

    # export: layers from the servers, the head from the master's weights dir; eval scores it as the run did
    rc, out = cli(env, "export", "pipe test", "--model-config", str(tmp_path / "model.yaml"), "--servers", "2",
                  "--pipeline", str(pipeline), "-o", str(tmp_path / "pipe.pt"))
    assert rc == 0, out
    assert f"server_1:{FOLDER}/layer0" in out and f"server_2:{FOLDER}/layer1" in out, out
    assert str(tmp_path / "weights" / FOLDER / "head-") in out, out
    rc, out = cli(env, "eval", str(tmp_path / "pipe.pt"), "--data-root", str(data_root), "--no-download")
    assert rc == 0, out
    got = {k: float(v) / 100 for k, v in re.findall(r"test accuracy \[\s*(\w+)\]:\s+([\d.]+) %", out)}
    assert got.keys() == summary["accuracy"].keys(), out
    for k, v in summary["accuracy"].items():
        assert abs(got[k] - v) <= 0.002, (k, got, summary["accuracy"])

    # a model the YAML does not describe: export says so
    rc, out = cli(env, "export", "other", "--model-config", str(tmp_path / "model.yaml"), "--servers", "2")
    assert rc == 2 and "describes model 'pipe test', not 'other'" in out, out

    # delete with --weights: layers freed and saved weights gone on both servers; export then fails clearly
    rc, out = cli(env, "delete", "pipe test", "--weights", "--servers", "2", "--pipeline", str(pipeline))
    assert rc == 0 and out.count("1 saved weight file(s)") == 2, out
    assert not list((tmp_path / "w1").glob("*/*.pt")) and not list((tmp_path / "w2").glob("*/*.pt"))
    rc, out = cli(env, "export", "pipe test", "--model-config", str(tmp_path / "model.yaml"), "--servers", "2",
                  "--pipeline", str(pipeline), "-o", str(tmp_path / "again.pt"))
    assert rc == 1 and "no saved weights of layer 0, layer 1 of 'pipe test'" in out, out
