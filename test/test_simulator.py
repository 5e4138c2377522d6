"""The schedule simulator against cases worked out by hand."""
import pytest

from dff_ros.pff.plan import PFFPlan
from dff_ros.simulator import Link, Workload, simulate_dff, simulate_pff

FAST = Link("ideal", 1e15)
W = Workload(task_seconds=(2.0, 3.0, 0.5), version_bytes=(1e6, 1e6, 1e4), splits=4)


def test_one_node_runs_every_task_back_to_back():
    r = simulate_pff(PFFPlan("all_layers", 1, 2, True), W, FAST)
    assert r.wall_seconds == pytest.approx(4 * 5.5) and r.utilisation == pytest.approx(1.0)


def test_single_layer_is_a_pipeline_paced_by_its_slowest_node():
    # node 0: layer 0 (2 s a chapter); node 1: layer 1 and the head (3.5 s), once version j+1 of layer 0 is there
    r = simulate_pff(PFFPlan("single_layer", 2, 2, True, (0, 1)), W, FAST)
    assert r.wall_seconds == pytest.approx(2.0 + 4 * 3.5)
    assert r.busy_seconds == pytest.approx([8.0, 14.0])


def test_all_layers_is_paced_by_the_chain_of_each_parts_versions():
    # version j+1 of layer 1 needs version j of it: layer 1's chapters run one after another,
    # each once its node has trained layer 0 of that chapter
    r = simulate_pff(PFFPlan("all_layers", 2, 2, False), Workload((2.0, 3.0), (1e6, 1e6), 4), FAST)
    assert r.wall_seconds == pytest.approx(2.0 + 4 * 3.0)


def test_a_slow_link_adds_each_versions_transfer_to_the_chain():
    slow = Link("8 Mbit/s", 8e6, latency_seconds=0.01)   # 1 MB: 1 s + 10 ms
    r = simulate_pff(PFFPlan("single_layer", 2, 2, False, (0, 1)), Workload((2.0, 3.0), (1e6, 1e6), 4), slow)
    assert r.wall_seconds == pytest.approx(2.0 + 1.01 + 4 * 3.0)
    # two nodes on one host with one core: layer 0's chapter 0 alone [0, 2]; then its chapter 1
    # and layer 1's chapter 0 share the core (half speed each) [2, 6]; layer 1's chapter 1 [6, 8]
    shared = simulate_pff(PFFPlan("single_layer", 2, 2, False, (0, 1)), Workload((2.0, 2.0), (0, 0), 2), FAST,
                          hosts=[0, 0], cores=1)
    assert sorted(x["end"] for x in shared.tasks) == pytest.approx([2.0, 6.0, 6.0, 8.0])
    # and beside another task a task runs 10 % slower (memory traffic): [2, 6.4] shared
    beside = simulate_pff(PFFPlan("single_layer", 2, 2, False, (0, 1)), Workload((2.0, 2.0), (0, 0), 2), FAST,
                          hosts=[0, 0], cores=2, beside=1.1)
    assert beside.wall_seconds == pytest.approx(2.0 + 2.2 + 2.0)


def test_emulated_hosts_send_over_the_link_but_share_one_machines_cores():
    slow = Link("8 Mbit/s", 8e6)   # 1 MB: 1 s
    w = Workload((2.0, 2.0), (1e6, 1e6), 2)
    plan = PFFPlan("single_layer", 2, 2, False, (0, 1))
    apart = simulate_pff(plan, w, slow)
    # the same two hosts on one machine with one core: the versions still take the link (1 s),
    # and layer 0's chapter 1 [2, 4] runs alone again, since layer 1's chapter 0 waits for its version [3, ...]
    shared = simulate_pff(plan, w, slow, cpus=[0, 0], cores=1)
    assert apart.wall_seconds == pytest.approx(2.0 + 1.0 + 2.0 + 2.0)
    assert sorted(x["end"] for x in shared.tasks) == pytest.approx([2.0, 5.0, 6.0, 8.0])
    # node 1 shares the core from 3 s: layer 0's chapter 1 ends at 5 (1 s alone, 2 s at half
    # speed), layer 1's chapter 0 at 6, then its chapter 1 (version 2 at 6) alone until 8


def test_a_version_reaches_all_its_readers_together_after_one_transfer_each():
    # All-Layers on 3 nodes: chapter j on node j. Node 0's version of layer 0 (1 MB, 1 s a copy)
    # goes to nodes 1 and 2 datagram by datagram: both have it at 2 + 2 s, not node 1 at 3 s
    slow = Link("8 Mbit/s", 8e6)
    r = simulate_pff(PFFPlan("all_layers", 3, 1, False), Workload((2.0,), (1e6,), 3), slow)
    start = {x["task"]: x["start"] for x in r.tasks}
    assert start[(0, 1)] == pytest.approx(4.0)
    # node 1's version leaves at 6 s: its uplink is free, whatever node 0 has queued for later
    assert start[(0, 2)] == pytest.approx(6.0 + 2.0)


def test_a_send_queued_for_later_does_not_hold_up_another_senders_earlier_one():
    # node 0 trains layer 0 then layer 1 of chapter 0 and queues both (4 MB each, 4 s a copy);
    # node 1's layer 0 (from 8 s) goes out at once although node 0's layer 1 still has its
    # transfer to node 2 ahead (8..16 s)
    slow = Link("8 Mbit/s", 8e6)
    r = simulate_pff(PFFPlan("all_layers", 3, 2, False), Workload((1.0, 1.0), (4e6, 4e6), 3), slow)
    start = {x["task"]: x["start"] for x in r.tasks}
    assert start[(0, 1)] == pytest.approx(1.0 + 8.0)
    assert start[(0, 2)] == pytest.approx(10.0 + 8.0)


def test_dff_chapters_pipeline():
    # the master's images arrive at 0.1 s a chapter (4 MB at 320 Mbit/s); layer 0 then trains
    # each chapter in 2 s, layer 1 in 3 s once layer 0's activities (8 MB: 0.2 s) arrive
    link = Link("320 Mbit/s", 3.2e8)
    r = simulate_dff(Workload((2.0, 3.0), (0, 0), 4, activity_bytes=(8e6, 8e6), image_bytes=4e6), link)
    # layer 1's chapters: first at 0.1 + 2 + 0.2, then one after another (3 s > 2 s); the last
    # one's activities reach the master 0.2 s later
    assert r.wall_seconds == pytest.approx(0.1 + 2.0 + 0.2 + 4 * 3.0 + 0.2)
    assert len(r.busy_seconds) == 2 and r.busy_seconds == pytest.approx([8.0, 12.0])
