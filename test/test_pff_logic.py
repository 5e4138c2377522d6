"""PFF parameter passing as plain logic: plans, shards, part state, the parameter store, and
workers run as threads over one in-memory store, checked against the sequential reference."""
import threading

import pytest
import torch

from dff_ros.config import parse_model_config
from dff_ros.ff.classifiers import accuracy
from dff_ros.ff.negatives import NegativeLabels
from dff_ros.ff.network import FFNetwork
from dff_ros.ff.trainer import ReferenceTrainer
from dff_ros.parts.names import NEGATIVES
from dff_ros.pff.plan import PFFPlan, shard_indices
from dff_ros.parts.state import load_part_state, part_state
from dff_ros.parts.versions import ParameterStore, Parameters, ParametersTimeout
from dff_ros.pff.worker import PFFWorker, check_pff_supported, network_from_parts


def config(layers=3, **train):
    return parse_model_config({
        "name": "t", "model": [[-1, "FFDense", [120]] for _ in range(layers)],
        "train": {"epochs": 4, "splits": 4, "lr": 0.003, "schedule": "chapters", "train_subset": 3000,
                  "test_subset": 1000, "threads": 2, **train}}, "test")


def test_plan_assigns_tasks_like_the_paper():
    single = PFFPlan("single_layer", 3, 3, head=True, layer_nodes=(0, 1, 2))
    assert [single.parts_for(n, 5) for n in range(3)] == [[0], [1], [2, 3]]  # head with the last layer
    assert not single.passes_optimizer
    every = PFFPlan("all_layers", 2, 3, head=True)
    assert every.parts_for(0, 0) == [0, 1, 2, 3] and every.parts_for(1, 0) == []
    assert every.parts_for(1, 3) == [0, 1, 2, 3] and every.passes_optimizer
    assert every.trained_by(1, splits=5) == [0, 1, 2, 3] and every.received_by(1, splits=5) == [0, 1, 2, 3]
    assert single.trained_by(2, splits=5) == [2, 3] and single.received_by(2, splits=5) == [0, 1]
    assert not PFFPlan("all_layers", 1, 2, head=False).passes_optimizer
    with pytest.raises(ValueError, match="a node for each"):
        PFFPlan("single_layer", 2, 3, head=False, layer_nodes=(0, 1))
    with pytest.raises(ValueError, match="nodes must be 0..1"):
        PFFPlan("single_layer", 2, 2, head=False, layer_nodes=(0, 2))
    with pytest.raises(ValueError, match="unknown PFF variant"):
        PFFPlan("ring", 2, 2, head=False)


def test_plan_knows_when_the_other_nodes_have_no_work_left():
    # the versions the other nodes' last tasks make (part -> version), newest per part
    every = PFFPlan("all_layers", 2, 2, head=True)          # parts 0, 1 and the head (2)
    assert every.others_last_outputs(0, splits=5) == {2: 4}     # node 1's last: head in chapter 3
    assert every.others_last_outputs(1, splits=5) == {2: 5}     # node 0's last: head in chapter 4
    assert PFFPlan("all_layers", 3, 2, head=True).others_last_outputs(2, splits=5) == {2: 5}
    assert PFFPlan("all_layers", 3, 2, head=True).others_last_outputs(0, splits=2) == {2: 2}
    single = PFFPlan("single_layer", 2, 2, head=False, layer_nodes=(0, 1))
    assert single.others_last_outputs(1, splits=4) == {0: 4} and single.others_last_outputs(0, splits=4) == {1: 4}
    assert PFFPlan("all_layers", 4, 2, head=False).others_last_outputs(0, splits=2) == {1: 2}   # 2, 3: no tasks
    assert PFFPlan.is_root(0, 0) and not PFFPlan.is_root(1, 0) and not PFFPlan.is_root(0, 1)


def test_plan_routes_adaptive_negatives():
    adaptive = config(layers=3, negatives="adaptive")
    # default lag N: All-Layers nodes score their own next chapter; nothing crosses nodes
    every = PFFPlan.for_model(adaptive, "all_layers", 2)
    assert every.negatives_lag == 2 and every.negatives_scorer(3) == 1 and every.negatives_users(5) == {1}
    assert NEGATIVES not in every.trained_by(0, splits=6) + every.received_by(0, splits=6)
    # Single-Layer: the last layer's node scores and publishes; the others listen
    single = PFFPlan.for_model(adaptive, "single_layer", 3, (0, 1, 2))
    assert single.negatives_lag == 3 and single.negatives_scorer(0) == 2
    assert [NEGATIVES in single.trained_by(n, splits=6) for n in range(3)] == [False, False, True]
    assert [NEGATIVES in single.received_by(n, splits=6) for n in range(3)] == [True, True, False]
    assert NEGATIVES not in single.trained_by(2, splits=3)   # no chapter is 3 after another one
    lag1 = PFFPlan.for_model(config(layers=3, negatives="adaptive", negatives_lag=1), "all_layers", 2)
    assert NEGATIVES in lag1.trained_by(0, splits=6) and NEGATIVES in lag1.received_by(0, splits=6)
    assert PFFPlan.for_model(config(), "all_layers", 2).negatives_lag == 0     # random negatives
    with pytest.raises(ValueError, match="test: .*multiple of the node count 2"):
        PFFPlan.for_model(config(negatives="adaptive", negatives_lag=3), "federated", 2)


def test_federated_shards_are_disjoint_and_cover_the_data():
    shards = [shard_indices(1001, n, 3, seed=4) for n in range(3)]
    assert sum(len(s) for s in shards) == 1001
    assert torch.equal(torch.cat(shards).sort().values, torch.arange(1001))
    assert all(abs(len(s) - 1001 / 3) < 1 for s in shards)
    assert torch.equal(shards[1], shard_indices(1001, 1, 3, seed=4))   # every node computes the same split


def test_random_negatives_depend_only_on_seed_and_chapter():
    labels = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(0))
    walked = NegativeLabels("random", labels, 10, seed=5)
    for j in range(4):
        last = walked.for_chapter(j).clone()
    assert torch.equal(last, NegativeLabels("random", labels, 10, seed=5).for_chapter(3))
    assert not torch.equal(last, NegativeLabels("random", labels, 10, seed=5).for_chapter(2))
    fixed = NegativeLabels("fixed", labels, 10, seed=5)
    assert torch.equal(fixed.for_chapter(0), NegativeLabels("fixed", labels, 10, seed=5).for_chapter(3))


def test_part_state_moves_training_to_another_learner(mnist):
    """Training chapter 2 on a copy loaded from part_state equals going on in place."""
    cfg = config(layers=2, peer_normalization=0.03)
    x, y = mnist["train_images"][:512], mnist["train_labels"][:512]

    def fresh():
        net = FFNetwork.from_config(cfg)
        return net.make_learners(cfg.train)[0][0]

    from dff_ros.ff.learners import make_inputs
    inputs = make_inputs(x, y, (y + 1) % 10, 10, False)
    a, b = fresh(), fresh()
    for learner in (a,):
        for idx in torch.arange(512).split(64):
            learner.train_step(inputs.select(idx))
    load_part_state(b, part_state(a, optimizer=True))
    for learner in (a, b):
        for idx in torch.arange(512).split(64):
            learner.train_step(inputs.select(idx))
    assert torch.equal(a.layer.linear.weight, b.layer.linear.weight) and torch.equal(a.running_mean, b.running_mean)
    with pytest.raises(ValueError, match="layer"):
        load_part_state(b, {"layer.linear.weight": torch.zeros(3, 3), "layer.linear.bias": torch.zeros(3)})


def test_store_waits_for_versions_and_says_what_it_waited_for():
    sent = []
    store = ParameterStore(publish=sent.append, names={0: "layer 0"})
    store.put(Parameters(0, 9, {}))
    assert [p.version for p in sent] == [9] and store.latest(0) is None   # own versions only go out
    store.add(Parameters(0, 2, {}))
    store.add(Parameters(0, 4, {}))
    assert store.get(0, 3, exact=False, timeout=0.1).version == 4     # the oldest allowed
    with pytest.raises(ParametersTimeout, match="layer 0 version 2 .*have \\[4\\]"):
        store.get(0, 2, exact=True, timeout=0.2)                       # older versions were dropped
    threading.Timer(0.2, lambda: store.add(Parameters(0, 5, {}))).start()
    assert store.get(0, 5, exact=True, timeout=5).version == 5
    threading.Timer(0.2, lambda: store.close("deleted")).start()
    with pytest.raises(ParametersTimeout, match="deleted"):
        store.get(1, 1, exact=True, timeout=5)


def run_workers(cfg, data, plan, federated=False, solo_threads=0):
    """Every node a thread with its own store; a put reaches every other node's store, like a
    publish (the ROS transport is tested in test_ros_pff)."""
    t = cfg.train
    x, y = data["train_images"][:t.train_subset], data["train_labels"][:t.train_subset]
    stores = []
    seen = ParameterStore()  # what a listener on every params topic gets (the master)

    def broadcast(params, sender):
        for s in [*stores, seen]:
            if s is not sender:
                s.add(params)

    workers = []
    for node in range(plan.nodes):
        store = ParameterStore()
        store.publish = lambda params, store=store: broadcast(params, store)
        stores.append(store)
        idx = shard_indices(len(y), node, plan.nodes, t.seed) if federated else torch.arange(len(y))
        workers.append(PFFWorker(cfg, x[idx], y[idx], plan, node, store, wait_seconds=120,
                                 solo_threads=solo_threads))
    errors = []

    def go(w):
        try:
            w.run()
        except Exception as e:  # surfaced below
            errors.append(e)
            for s in stores:
                s.close(repr(e))

    threads = [threading.Thread(target=go, args=(w,)) for w in workers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    final = {p: seen.latest(p) for p in range(plan.parts)}
    assert all(f.version == t.splits for f in final.values())
    return network_from_parts(cfg, {p: f.tensors for p, f in final.items()}), workers


def test_pff_checks_what_it_supports():
    with pytest.raises(ValueError, match="train.schedule"):
        check_pff_supported(config(schedule="stream"))


@pytest.mark.parametrize("plan", [
    PFFPlan("single_layer", 3, 3, head=True, layer_nodes=(0, 1, 2)),
    PFFPlan("single_layer", 2, 3, head=True, layer_nodes=(0, 1, 1)),
    PFFPlan("all_layers", 2, 3, head=True),
    PFFPlan("all_layers", 3, 3, head=True),
], ids=["single3", "single2", "all2", "all3"])
def test_pff_variants_reproduce_the_sequential_run(mnist, plan):
    cfg = config()
    ref = ReferenceTrainer(cfg, mnist, progress=False)
    ref.fit()
    net, workers = run_workers(cfg, mnist, plan)
    for mine, theirs in zip(net.state_dict().values(), ref.net.state_dict().values()):
        assert torch.equal(mine, theirs), "same tasks, same order: same parameters"
    for c in ("goodness", "softmax"):
        assert round(accuracy(net, ref.test_x, ref.test_y, c), 4) == ref.evaluate()[c]   # evaluate() keeps 4 digits
    # schedule order: task (p, j) ran on version j of p and version >= j+1 of every layer below it
    tasks = [e for w in workers for e in w.timeline if e["part"] != NEGATIVES]
    assert len(tasks) == plan.parts * cfg.train.splits
    for e in tasks:
        assert all(v >= e["chapter"] + 1 for v in e["inputs"].values()), e
    if plan.variant == "all_layers":  # N chapters in flight: the nodes overlapped
        spans = sorted((e["start"], e["end"]) for e in tasks)
        assert any(b_start < a_end for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def test_a_node_takes_the_cores_while_the_others_have_no_work(mnist):
    cfg = config(layers=2, threads=1)
    ref = ReferenceTrainer(cfg, mnist, progress=False)
    ref.fit()
    torch.set_num_threads(1)
    try:
        net, workers = run_workers(cfg, mnist, PFFPlan("all_layers", 2, 2, head=True), solo_threads=2)
        assert torch.get_num_threads() == 1, "each task gives the extra threads back"
    finally:
        torch.set_num_threads(2)
    threads = {(e["part"], e["chapter"]): e["threads"] for w in workers for e in w.timeline}
    assert threads[(0, 0)] == 2             # every other task waits for the first one
    assert threads[(0, 1)] == 1             # node 0 still has chapters 2 and 3 to train
    assert threads[(2, 3)] == 2             # the last task needs node 0's last output: it is alone
    for mine, theirs in zip(net.state_dict().values(), ref.net.state_dict().values()):
        assert torch.equal(mine, theirs), "more threads, the same training"


@pytest.mark.parametrize("variant,nodes,layer_nodes,lag", [
    ("all_layers", 2, (), None),          # each node scores its own next chapter (lag 2)
    ("single_layer", 2, (0, 1, 1), None),  # node 1 scores, node 0 waits for its labels (lag 2)
    ("single_layer", 2, (0, 1, 1), 1),     # the sequential choice: the pipeline runs serially
], ids=["all2", "single2", "single2-lag1"])
def test_pff_adaptive_negatives_reproduce_the_sequential_run_with_the_same_lag(mnist, variant, nodes,
                                                                                layer_nodes, lag):
    cfg = config(negatives="adaptive", negatives_lag=lag)
    plan = PFFPlan.for_model(cfg, variant, nodes, layer_nodes)
    ref_cfg = config(negatives="adaptive", negatives_lag=plan.negatives_lag)
    ref = ReferenceTrainer(ref_cfg, mnist, progress=False)
    ref.fit()
    net, workers = run_workers(cfg, mnist, plan)
    for mine, theirs in zip(net.state_dict().values(), ref.net.state_dict().values()):
        assert torch.equal(mine, theirs), "same negatives from the same network"
    scored = sorted(e["chapter"] for w in workers for e in w.timeline if e["part"] == NEGATIVES)
    assert scored == list(range(plan.negatives_lag, cfg.train.splits))
    assert all(e["node"] == plan.negatives_scorer(e["chapter"] - plan.negatives_lag)
               for w in workers for e in w.timeline if e["part"] == NEGATIVES)


def test_federated_and_pon(mnist):
    cfg = config(layers=2, epochs=8, splits=8)   # each chapter sees half the data
    net, workers = run_workers(cfg, mnist, PFFPlan("federated", 2, 2, head=True), federated=True)
    assert len(workers[0].labels) + len(workers[1].labels) == 3000
    test_x, test_y = mnist["test_images"][:1000], mnist["test_labels"][:1000]
    assert accuracy(net, test_x, test_y, "softmax") > 0.8
    pon = config(layers=2, algorithm="pon", classifiers=["pon_last", "pon_all"])
    net, _ = run_workers(pon, mnist, PFFPlan("all_layers", 2, 2, head=False))
    assert accuracy(net, test_x, test_y, "pon_all") > 0.8


def test_a_replacement_starts_where_the_lost_nodes_inputs_still_exist():
    all2 = PFFPlan("all_layers", 2, 2, head=True)
    upto = lambda chapters, parts=range(3): {(p, c) for c in chapters for p in parts}   # noqa: E731
    # node 1 reported chapter 1 and part of 3: chapter 3 starts from node 0's versions
    assert all2.resume_chapter(1, 6, upto([0, 1, 2]) | {(0, 3)}) == 3
    assert all2.resume_chapter(0, 6, upto([0, 1])) == 2
    # every task done, the last chapter on node 1: the final versions went with it
    assert all2.resume_chapter(1, 6, upto(range(6))) == 5
    assert all2.resume_chapter(0, 6, upto(range(6))) == 6        # node 0 holds no final version
    single = PFFPlan("single_layer", 2, 2, head=True, layer_nodes=(0, 1))
    # a Single-Layer node trains on its own versions: a replacement starts over
    assert single.resume_chapter(1, 6, upto(range(4))) == 0
    assert single.resume_chapter(0, 6, upto(range(4))) == 0


@pytest.mark.parametrize("variant,layer_nodes,negatives", [
    ("all_layers", (), "random"), ("all_layers", (), "adaptive"), ("single_layer", (0, 1, 1), "random")])
def test_a_replacement_node_finishes_a_lost_nodes_share(mnist, variant, layer_nodes, negatives):
    """2 nodes: node 1 dies in chapter 2 (All-Layers: its second chapter, 3). A new node 1
    joins with what the live node's topics still hold (a dead node's transient-local history
    dies with it) and starts where the master would tell it. All-Layers with random negatives
    ends with the sequential run's parameters. With adaptive ones the replacement scores the
    labels node 1 had scored for chapter 3 again, from a fresher network; Single-Layer starts
    node 1's layers over. Both end near the sequential run's accuracy."""
    from dff_ros.pff.worker import WorkerStopped

    cfg = config(negatives=negatives)
    plan = PFFPlan.for_model(cfg, variant, 2, layer_nodes)
    ref = ReferenceTrainer(config(negatives=negatives, negatives_lag=plan.negatives_lag or None), mnist,
                           progress=False)
    ref.fit()
    t = cfg.train
    x, y = mnist["train_images"][:t.train_subset], mnist["train_labels"][:t.train_subset]
    lock, history, seen, dead = threading.Lock(), [], ParameterStore(), set()
    reported: set[tuple[int, int]] = set()

    def broadcast(params, sender):
        with lock:
            history.append((sender, params))
            if params.part != NEGATIVES:
                reported.add((params.part, params.version - 1))
            for s in [*stores, seen]:
                if s is not sender:
                    s.add(params)

    stores: list[ParameterStore] = []

    def node(index: int, on_batch=None):
        store = ParameterStore()
        store.publish = lambda params: broadcast(params, store)
        with lock:
            stores.append(store)
            for sender, params in history:   # transient local: what live writers still hold
                if sender not in dead:
                    store.add(params)
        return PFFWorker(cfg, x, y, plan, index, store, wait_seconds=120, on_batch=on_batch)

    kill_chapter = 3 if variant == "all_layers" else 2

    def kill(part, chapter, epoch, loss, rows):
        if chapter == kill_chapter:
            doomed.stop("killed")

    first = node(0)
    doomed = node(1, on_batch=kill)
    outcome = {}
    threads = [threading.Thread(target=lambda: first.run()),
               threading.Thread(target=lambda: outcome.setdefault("doomed", _run_catching(doomed)))]
    for th in threads:
        th.start()
    threads[1].join()
    assert isinstance(outcome["doomed"], WorkerStopped), outcome
    with lock:
        dead.add(doomed.store)
        start = plan.resume_chapter(1, t.splits, set(reported))
    assert start == (3 if variant == "all_layers" else 0)
    replacement = node(1)
    th = threading.Thread(target=lambda: replacement.run(start_chapter=start))
    th.start()
    th.join(300)
    threads[0].join(300)
    final = {p: seen.latest(p) for p in range(plan.parts)}
    assert all(f.version == t.splits for f in final.values())
    trained = {e["chapter"] for e in replacement.timeline if e["part"] != NEGATIVES}
    assert trained == set(range(start, t.splits)) & {c for c in range(t.splits) if plan.parts_for(1, c)}
    assert all(replacement.held[p] == t.splits for p in plan.parts_for(1, t.splits - 1))
    net = network_from_parts(cfg, {p: f.tensors for p, f in final.items()})
    if variant == "all_layers" and negatives == "random":
        for mine, theirs in zip(net.state_dict().values(), ref.net.state_dict().values()):
            assert torch.allclose(mine, theirs, atol=1e-5), "the lost chapter trained again, from the same inputs"
        return
    if negatives == "adaptive":   # chapter 3's labels, scored again on the replacement
        assert [e["chapter"] for e in replacement.timeline if e["part"] == NEGATIVES] == [3]
    for c in ("goodness", "softmax"):
        assert accuracy(net, ref.test_x, ref.test_y, c) == pytest.approx(ref.evaluate()[c], abs=0.03), c


def _run_catching(worker):
    try:
        worker.run()
    except Exception as e:
        return e
    return None
