"""Who may change a model's run on a server (dff_ros/control.py), and what a server refuses
before any work: pure logic, no ROS graph."""
import pytest

from bad_inputs import request_cases

from dff_ros.control import RunKeys, new_run_key
from dff_ros.wire.codec import host_request_from_msg


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_only_the_runs_master_or_an_operator_naming_the_run_may_change_it():
    clock = Clock()
    keys = RunKeys(release_seconds=600, clock=clock)
    key = new_run_key()
    assert key and new_run_key() != key
    # nothing held: anything goes (a first run, an operator tidying up)
    assert keys.refusal("delete_model", "m") == ""
    keys.hold("m", "run-a", key)
    for what in ("delete_model", "save_weights", "fetch_parameters"):
        assert "only that run's master may change it" in keys.refusal(what, "m"), what
        assert "dff-ros delete 'm' --run run-a" in keys.refusal(what, "m")
        assert keys.refusal(what, "m", key=key ^ 1) != ""                  # a wrong key
        assert keys.refusal(what, "m", key=key) == ""                      # the master
        assert keys.refusal(what, "m", run_id="run-a") == ""               # an operator naming the run
        assert keys.refusal(what, "m", run_id="run-b") != ""               # naming another run
        assert keys.refusal(what, "m", run_id="run-a", key=key ^ 1) != ""  # a named run, a wrong key
        assert keys.refusal(what, "other") == ""                           # other models are not held
    # create_layers: the run's master adds layers (recovery); another run, or no key, may not
    assert keys.refusal("create_layers", "m", key=key, creating="run-a") == ""
    assert "only its master" in keys.refusal("create_layers", "m", creating="run-a")
    assert keys.refusal("create_layers", "m", key=new_run_key(), creating="run-b") != ""
    assert keys.refusal("create_layers", "m", run_id="run-a", creating="run-b") != ""
    # heard from: still live; silent for release_seconds: free again
    clock.t = 599.0
    keys.heard("m")
    clock.t = 1198.0
    assert keys.refusal("delete_model", "m") != ""
    clock.t = 1199.5
    assert keys.refusal("delete_model", "m") == "" and keys.live("m") is None
    # released by its master: free at once
    keys.hold("m", "run-c", key)
    keys.release("m")
    assert keys.refusal("create_layers", "m", creating="run-d") == ""
    # a run created without a key (0) is not protected
    keys.hold("m", "run-e", 0)
    assert keys.refusal("delete_model", "m") == ""


@pytest.mark.parametrize("what,request_msg,reason", request_cases(), ids=[c[0] for c in request_cases()])
def test_bad_create_requests_are_refused_by_name_before_any_work(what, request_msg, reason):
    with pytest.raises(Exception) as e:
        host_request_from_msg(request_msg)
    assert reason in str(e.value), (what, str(e.value))
