"""The DFF pipeline's logic (hosted layers + master driver) wired in-process, checked against
the single-process reference trainer. The ROS transport is tested in test_ros_*."""
import dataclasses
import queue

import pytest
import torch

from dff_ros.config import parse_model_config
from dff_ros.ff.learners import Activities
from dff_ros.ff.trainer import ReferenceTrainer
from dff_ros.pipeline.chunks import ChunkError, InferChunk, TrainChunk
from dff_ros.pipeline.driver import PipelineDriver, ServerLost, check_supported
from dff_ros.pipeline.host import LayerHost
from dff_ros.pipeline.scoring import NetworkSnapshots, scored_versions


def config(schedule, **train):
    return parse_model_config({
        "name": "t", "model": [[-1, "FFDense", [200]], [-1, "FFDense", [200]], [-1, "FFDense", [200]]],
        "train": {"epochs": 6, "splits": 2, "lr": 0.003, "schedule": schedule, "train_subset": 4000,
                  "test_subset": 1000, "threads": 2, **train}}, "test")


def run_in_process(cfg, data, count_layers=False):
    """Hosts chained by direct calls: each output chunk goes straight to the next host.
    ``count_layers``: the progress counts the hosts' trained rows too (as the master does)."""
    hosts = [LayerHost(s, cfg.train, cfg.num_classes, last=s.index == len(cfg.layers) - 1) for s in cfg.layers]
    results = queue.Queue()
    snapshots = NetworkSnapshots(len(hosts), scored_versions(cfg)) if scored_versions(cfg) else None
    for h in hosts:   # what the master hears on the checkpoints topic
        h.on_checkpoint = snapshots and (lambda p: snapshots.add(p.part, p.version, p.tensors))

    def push(i, chunk, infer):
        outs = [hosts[i].infer(chunk)] if infer else hosts[i].train(chunk)
        for out in outs:
            if i + 1 == len(hosts):
                results.put(out)
            else:
                push(i + 1, out, infer)

    driver = PipelineDriver(cfg, data, send_train=lambda c: push(0, c, False),
                            send_infer=lambda c: push(0, c, True), results=results, chunk_rows=700,
                            progress=False, snapshots=snapshots,
                            layer_samples=(lambda: sum(h.samples for h in hosts)) if count_layers else None)
    driver.fit()
    return driver.evaluate()["accuracy"], hosts, driver


@pytest.mark.parametrize("schedule, train", [("stream", {}), ("chapters", {}),
                                             ("chapters", {"augment_crop": 2, "augment_flip": True}),
                                             # adaptive negatives: the master scores them with the layers'
                                             # checkpoints; the lag as the reference's (DFF's default: 3 layers)
                                             ("chapters", {"negatives": "adaptive", "splits": 6, "negatives_lag": 3}),
                                             ("chapters", {"negatives": "adaptive", "splits": 3, "negatives_lag": 1}),
                                             ("stream", {"negatives": "adaptive", "splits": 3, "negatives_lag": 1}),
                                             ("chapters", {"algorithm": "cwc", "classifiers": ["cwc_all", "cwc_last"]}),
                                             ("stream", {"algorithm": "cwc", "classifiers": ["cwc_last"]}),
                                             ("chapters", {"algorithm": "pon", "classifiers": ["pon_last", "pon_all"]}),
                                             ("stream", {"algorithm": "pon", "classifiers": ["pon_all"]}),
                                             ("chapters", {"negatives": "hybrid", "classifiers": ["softmax"]}),
                                             ("stream", {"negatives": "hybrid", "classifiers": ["softmax"],
                                                         "augment_crop": 1})])
def test_pipeline_matches_reference(mnist, schedule, train):
    cfg = config(schedule, **train)   # augmented: the master draws the chapter's copy as the reference does
    reference = ReferenceTrainer(cfg, mnist, progress=False).fit()
    ref = reference["accuracy"]
    got, hosts, driver = run_in_process(cfg, mnist)
    assert min(got.values()) > (0.6 if train else 0.75), got
    if cfg.train.negatives == "adaptive":   # every scored chapter scored once, on the master
        assert sorted(driver.scored) == list(range(cfg.train.negatives_lag, cfg.train.splits))
        assert driver.scoring_seconds > 0
    # Both schedules run the same updates in the same order as the reference, with the same bits
    # whatever the thread count (the driver trains the head with 1 thread, the reference with 2;
    # dff_ros/numerics.py), so the results are equal, not close.
    assert got == ref
    # so the per-epoch curves the plots show are the reference's too
    history = reference["history"]
    heads = [("head", driver.head_history)] if driver.head is not None else []   # cwc: no head
    for name, means in [*((f"layer_{h.spec.index}", h.history) for h in hosts), *heads]:
        loss, acc = means.as_lists(cfg.train.epochs)
        # the same sums; the reference's history keeps 5 decimals
        assert loss == pytest.approx(history["loss"][name], abs=1e-5), name
        assert acc == pytest.approx(history["accuracy"][name], abs=1e-5), name


def test_progress_counts_the_layers_rows_as_they_train(mnist):
    cfg = config("chapters", epochs=2, splits=1)
    _, _, driver = run_in_process(cfg, mnist, count_layers=True)
    rows = cfg.train.train_subset * cfg.train.epochs
    assert driver.progress.total == driver.progress.done == rows * (len(cfg.layers) + 1)
    _, _, driver = run_in_process(cfg, mnist)   # the head's rows only
    assert driver.progress.total == driver.progress.done == rows


@pytest.mark.parametrize("schedule, train", [("chapters", {}), ("stream", {}),
                                             ("chapters", {"negatives": "adaptive", "negatives_lag": 1})])
def test_lost_layer_resumes_from_its_checkpoint_and_every_chapter_is_trained_once(mnist, schedule, train):
    """Layer 1 dies while chapter 1 reaches it (checkpoint: after chapter 0); layer 0 has gone
    on (chapters: to chapter 2; stream: one minibatch further, in the middle of chapter 1's
    second epoch). A new host resumes from the checkpoint, the driver resends from chapter 1,
    layers only pass on what they trained before, and every update happens once. Adaptive: the
    driver waits for the network after chapter 1 to score chapter 2 when the layer dies; chapter
    1 is resent with the labels it had."""
    cfg = config(schedule, splits=3, **train)
    n = cfg.train.train_subset
    ref = ReferenceTrainer(cfg, mnist, progress=False).fit()["accuracy"]
    results, checkpoints, state = queue.Queue(), {}, {"dead": False, "lost": 0}
    snapshots = NetworkSnapshots(3, scored_versions(cfg)) if train else None

    def on_checkpoint(p):
        checkpoints[p.part] = p
        if snapshots is not None:
            snapshots.add(p.part, p.version, p.tensors)
    hosts = [LayerHost(s, cfg.train, cfg.num_classes, last=s.index == 2, on_checkpoint=on_checkpoint)
             for s in cfg.layers]

    def push(i, chunk, infer):
        if i == 1 and not infer and chunk.chapter == 1 and chunk.attempt == 0 and (
                schedule == "chapters" or (chunk.epoch == 4 and chunk.seq == 10)):
            state["dead"] = True
        if i == 1 and state["dead"]:
            return                                  # the server is gone: its input goes nowhere
        outs = [hosts[i].infer(chunk)] if infer else hosts[i].train(chunk)
        for out in outs:
            results.put(out) if i + 1 == len(hosts) else push(i + 1, out, infer)

    def health():
        if state["dead"]:
            raise ServerLost("server_2", 5.0)

    def recover(lost):
        state["dead"], state["lost"] = False, state["lost"] + 1
        hosts[1] = LayerHost(cfg.layers[1], cfg.train, cfg.num_classes, last=False,
                             on_checkpoint=hosts[0].on_checkpoint)
        hosts[1].resume(checkpoints[1])
        return min(h.chapters_done for h in hosts)

    driver = PipelineDriver(cfg, mnist, send_train=lambda c: push(0, c, False), send_infer=lambda c: push(0, c, True),
                            results=results, chunk_rows=700, progress=False, health=health, recover=recover,
                            snapshots=snapshots)
    driver.fit()
    got = driver.evaluate()["accuracy"]
    if train:
        assert sorted(driver.scored) == [1, 2]
    assert state["lost"] == 1 and driver.attempt == 1 and checkpoints[1].version == 3
    # exactly once: every layer (and the head) trained every chapter, none twice
    assert [h.chapters_done for h in hosts] == [3, 3, 3] and driver.head_done == 3
    assert [h.samples for h in hosts] == [n * cfg.train.epochs] * 3
    assert hosts[0].stale == 0 and hosts[2].stale == 0
    if schedule == "stream":   # the head trained each minibatch once too
        assert all(s[2] == -(-n // cfg.train.batch_size) for s in driver.head_history._sums.values())
    # the replacement took layer 1's curve over with its checkpoint: every epoch, each batch once
    batches = -(-n // cfg.train.batch_size)
    assert all(s[2] == batches for s in hosts[1].history._sums.values()), hosts[1].history._sums
    assert sorted(hosts[1].history.loss()) == list(range(1, cfg.train.epochs + 1))
    for k in ("goodness", "softmax"):
        assert abs(got[k] - ref[k]) <= 0.02, (k, got, ref)


@pytest.mark.parametrize("schedule", ["chapters", "stream"])
def test_results_that_are_not_this_runs_are_dropped_and_change_nothing(mnist, schedule):
    """Forged results ahead of every real one (the issue's attacks on /output/train and
    /output/infer: chapters that do not exist, labels out of range or not the rows sent, feature
    widths the head cannot read, NaN features, a seq past the count, perfect goodness): each is
    dropped and counted; the run trains and scores exactly as without them."""
    cfg = config(schedule, epochs=2, splits=2, train_subset=1400, test_subset=400)
    reference, _, _ = run_in_process(cfg, mnist)
    results = queue.Queue()
    hosts = [LayerHost(s, cfg.train, cfg.num_classes, last=s.index == 2) for s in cfg.layers]
    forged = []

    def forgeries(real):
        n, f = len(real), real.features
        nan = torch.full_like(f, float("nan"))
        if isinstance(real, InferChunk):
            truth = torch.nn.functional.one_hot(real.labels, 10).float() * 1e3
            return [InferChunk(real.seq + 5, real.count, real.labels, goodness=truth, features=f),
                    InferChunk(real.seq, real.count, real.labels, goodness=truth.clone().fill_(float("nan")), features=f),
                    InferChunk(real.seq, real.count, torch.full((n,), 99), goodness=real.goodness, features=f),
                    InferChunk(real.seq, real.count, real.labels, goodness=real.goodness, features=f[:, :7])]
        return [TrainChunk(1000 + real.seq, real.epoch, real.seq, real.count, real.labels, features=f),
                TrainChunk(real.chapter, real.epoch, real.seq, real.count, (real.labels + 1) % 10, features=f),
                TrainChunk(real.chapter, real.epoch, real.seq, real.count, real.labels - 5, features=f),
                TrainChunk(real.chapter, real.epoch, real.seq, real.count, real.labels, features=nan),
                TrainChunk(real.chapter, real.epoch, real.seq, real.count, real.labels, features=f[:, :7]),
                TrainChunk(real.chapter, real.epoch, real.seq, real.count + 3, real.labels, features=f)]

    def push(i, chunk, infer):
        outs = [hosts[i].infer(chunk)] if infer else hosts[i].train(chunk)
        for out in outs:
            if i + 1 < len(hosts):
                push(i + 1, out, infer)
                continue
            for fake in forgeries(out):
                forged.append(fake)
                results.put(fake)
            results.put(out)

    driver = PipelineDriver(cfg, mnist, send_train=lambda c: push(0, c, False), send_infer=lambda c: push(0, c, True),
                            results=results, chunk_rows=700, progress=False)
    driver.fit()
    assert driver.evaluate()["accuracy"] == reference
    assert driver.rejected == len(forged) > 0


def test_host_drops_stale_and_out_of_order_chapters(mnist):
    cfg = config("chapters", splits=3)
    trained = []
    host = LayerHost(cfg.layers[0], cfg.train, 10, last=False, on_checkpoint=lambda p: trained.append(p.version))
    x, y = mnist["train_images"][:50], mnist["train_labels"][:50]

    def chunk(chapter, attempt):
        return TrainChunk(chapter, 1, 0, 1, y, images=(x * 255).to(torch.uint8), neg_labels=(y + 1) % 10,
                          attempt=attempt)

    assert host.train(chunk(1, 0)) == [] and host.stale == 1       # chapter 0 never came
    assert len(host.train(chunk(0, 0))) == 1 and host.chapters_done == 1 and trained == [1]
    before = host.layer.linear.weight.clone()
    assert len(host.train(chunk(0, 1))) == 1 and trained == [1]   # replayed: passed on only
    assert torch.equal(before, host.layer.linear.weight) and host.chapters_done == 1
    assert host.train(chunk(1, 0)) == [] and host.stale == 2       # older attempt
    resumed = LayerHost(cfg.layers[0], cfg.train, 10, last=False)
    resumed.resume(host.checkpoint())
    assert resumed.chapters_done == 1 and torch.equal(resumed.layer.linear.weight, before)
    with pytest.raises(ValueError, match="does not fit layer 1"):
        LayerHost(cfg.layers[1], cfg.train, 10, last=False).resume(host.checkpoint())


def test_host_rejects_bad_chunks():
    cfg = config("stream")
    first = LayerHost(cfg.layers[0], cfg.train, 10, last=False)
    second = LayerHost(cfg.layers[1], cfg.train, 10, last=False)
    lab = torch.tensor([1, 2])
    with pytest.raises(ChunkError, match="images"):
        first.train(TrainChunk(0, 1, 0, 1, lab))
    with pytest.raises(ChunkError, match="expected"):
        first.train(TrainChunk(0, 1, 0, 1, lab, images=torch.zeros(2, 10, dtype=torch.uint8), neg_labels=lab))
    with pytest.raises(ChunkError, match="labels"):
        first.train(TrainChunk(0, 1, 0, 1, torch.tensor([1, 12]), images=torch.zeros(2, 784, dtype=torch.uint8),
                               neg_labels=lab))
    with pytest.raises(ChunkError, match="seq"):
        first.train(TrainChunk(0, 1, 3, 2, lab, images=torch.zeros(2, 784, dtype=torch.uint8), neg_labels=lab))
    with pytest.raises(ChunkError, match="chapter"):
        first.train(TrainChunk(9, 1, 0, 1, lab, images=torch.zeros(2, 784, dtype=torch.uint8), neg_labels=lab))
    with pytest.raises(ChunkError, match="pos and neg"):
        second.train(TrainChunk(0, 1, 0, 1, lab))
    with pytest.raises(ChunkError, match="candidates"):
        second.infer(InferChunk(0, 1, lab, candidates=torch.zeros(3, 200), goodness=torch.zeros(2, 10),
                                neutral=torch.zeros(2, 200)))

    # values that would poison the layer: one NaN row turns every weight NaN
    acts = Activities(pos=torch.zeros(2, 200), neg=torch.zeros(2, 200), neutral=torch.zeros(2, 200), labels=lab)
    before = {k: v.clone() for k, v in second.checkpoint().tensors.items()}
    for name, bad in (("pos", float("nan")), ("neg", float("inf")), ("neutral", float("-inf"))):
        poisoned = dataclasses.replace(acts, **{name: getattr(acts, name).clone().fill_(bad)})
        with pytest.raises(ChunkError, match=f"{name} has NaN or infinite"):
            second.train(TrainChunk(0, 1, 0, 1, lab, acts=poisoned))
    with pytest.raises(ChunkError, match="features has NaN"):
        second.train(TrainChunk(0, 1, 0, 1, lab, acts=acts, features=torch.full((2, 5), float("nan"))))
    for name in ("neutral", "candidates", "goodness"):
        good = {"candidates": torch.zeros(20, 200), "goodness": torch.zeros(2, 10), "neutral": torch.zeros(2, 200)}
        good[name] = good[name].clone().fill_(float("nan"))
        with pytest.raises(ChunkError, match=f"{name} has NaN"):
            second.infer(InferChunk(0, 1, lab, **good))
    assert all(torch.equal(v, second.checkpoint().tensors[k]) for k, v in before.items())   # nothing trained on it
    cp = second.checkpoint()
    name = next(k for k, v in cp.tensors.items() if v.is_floating_point())
    cp.tensors[name] = torch.full_like(cp.tensors[name], float("nan"))
    with pytest.raises(ValueError, match=f"NaN or infinite values in {name}"):   # a forged checkpoint
        LayerHost(cfg.layers[1], cfg.train, 10, last=False).resume(cp)
    # a chunk that does not fit never moves the layer's attempt (else every real chunk is stale)
    with pytest.raises(ChunkError):
        second.note_attempt(TrainChunk(0, 1, 5, 2, lab, acts=acts, attempt=2 ** 32 - 1))
    assert second.attempt == 0
    # chunks of one chapter that disagree on how many there are: the chapter could never complete
    chapters = LayerHost(cfg.layers[1], config("chapters").train, 10, last=False)
    chapters.train(TrainChunk(0, 1, 0, 3, lab, acts=acts))
    with pytest.raises(ChunkError, match="says 5 chunks, the chapter's others 3"):
        chapters.train(TrainChunk(0, 1, 1, 5, lab, acts=acts))


def test_dff_adaptive_lag_defaults_keep_the_pipeline_full():
    from dff_ros.pipeline.scoring import checkpoint_depth, dff_negatives_lag
    chapters = config("chapters", negatives="adaptive", splits=6)
    assert dff_negatives_lag(chapters) == 3 and scored_versions(chapters) == {1, 2, 3}
    assert checkpoint_depth(chapters) == 4 and checkpoint_depth(config("chapters")) == 1
    assert dff_negatives_lag(config("stream", negatives="adaptive", splits=6)) == 1
    assert dff_negatives_lag(config("chapters", negatives="adaptive", splits=6, negatives_lag=2)) == 2
    assert scored_versions(config("chapters", negatives="random", splits=6)) == set()


def test_snapshots_wait_for_every_layer_and_stand_in_for_a_missed_one():
    snaps = NetworkSnapshots(2, {1, 2})
    w = lambda v: {"w": torch.full((1,), float(v))}  # noqa: E731
    snaps.add(0, 1, w(1))
    assert snaps.take(1, wait=0.05) is None          # layer 1 has not finished chapter 0
    snaps.add(1, 1, w(1))
    states, stand_ins = snaps.take(1)
    assert [s["w"].item() for s in states] == [1, 1] and stand_ins == {}
    assert snaps.take(1) is None                     # taken: dropped
    snaps.add(0, 2, w(2))
    snaps.add(1, 3, w(3))                            # layer 1's version 2 went by unseen
    states, stand_ins = snaps.take(2)
    assert [s["w"].item() for s in states] == [2, 3] and stand_ins == {1: 3}


def test_snapshots_turn_away_a_checkpoint_that_does_not_fit_its_layer():
    from dff_ros.pipeline.scoring import layer_shapes
    cfg = config("chapters", negatives="adaptive", splits=6)
    hosts = [LayerHost(s, cfg.train, cfg.num_classes, last=s.index == 2) for s in cfg.layers]
    snaps = NetworkSnapshots(3, {1}, layer_shapes(cfg))
    good = hosts[1].checkpoint().tensors   # optimizer moments included: they are left out
    assert snaps.add(1, 1, good)
    assert not snaps.add(0, 1, good)                                    # layer 1's shapes on layer 0
    assert not snaps.add(2, 1, {k: v for k, v in good.items() if "bias" not in k})   # a tensor missing
    assert not snaps.add(7, 1, good)                                    # no such layer
    assert set(snaps.kept[1]) == {1}


def test_unsupported_configs_are_named():
    branched = parse_model_config({"name": "b", "model": [[-1, "FFDense", [50]], [-1, "FFDense", [50]],
                                                          [0, "FFDense", [50]]]}, "b.yaml")
    with pytest.raises(ValueError, match=r"model\[2\].from"):
        check_supported(branched)


def test_a_layer_takes_the_solo_threads_only_while_no_other_layer_has_work(mnist):
    cfg = config("chapters", splits=3)
    first, middle, last = (LayerHost(s, cfg.train, 10, last=s.index == 2) for s in cfg.layers)
    finished = [False]
    torch.set_num_threads(1)
    for h in (first, middle, last):
        h.use_cores(2, lambda: finished[0])
    try:
        # the first layer's first chapter: the others wait for it; later chapters they work too
        assert [first._alone(c) for c in range(3)] == [True, False, False]
        # a middle layer: below it works from its second chapter on, above it works until its last
        assert [middle._alone(c) for c in range(3)] == [False, False, False]
        # the last layer: alone once the layers above have sent their final chapter, or in it
        assert [last._alone(c) for c in range(3)] == [False, False, True]
        finished[0] = True
        assert [last._alone(c) for c in range(3)] == [True, True, True] and middle._alone(0)
        # the count is used while the chapter trains, and given back after it
        seen = []
        first.on_checkpoint = lambda p: seen.append(torch.get_num_threads())
        x, y = mnist["train_images"][:64], mnist["train_labels"][:64]
        first.train(TrainChunk(0, 1, 0, 1, y, images=(x * 255).to(torch.uint8), neg_labels=(y + 1) % 10))
        assert seen == [2] and torch.get_num_threads() == 1
        first.train(TrainChunk(1, 3, 0, 1, y, images=(x * 255).to(torch.uint8), neg_labels=(y + 1) % 10))
        assert seen == [2, 1]
    finally:
        torch.set_num_threads(2)
