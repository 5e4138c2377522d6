import pytest
import torch

from dff_ros.ff import overlay, overlay_all_labels, overlay_neutral
from dff_ros.ff.negatives import NegativeLabels, hardest_wrong_labels, random_wrong_labels
from dff_ros.ff.schedule import chapters, lr_factor


def test_overlay_replaces_first_pixels_with_one_hot():
    x = torch.rand(4, 784) + 0.5
    labels = torch.tensor([0, 3, 9, 3])
    y = overlay(x, labels)
    for row, lab in enumerate(labels.tolist()):
        expected = torch.zeros(10)
        expected[lab] = 1.0
        assert torch.equal(y[row, :10], expected)
    assert torch.equal(y[:, 10:], x[:, 10:])
    assert (x[:, :10] >= 0.5).all(), "overlay must not modify its input"


def test_neutral_overlay_is_all_tenths():
    y = overlay_neutral(torch.rand(2, 784))
    assert torch.allclose(y[:, :10], torch.full((2, 10), 0.1))


def test_all_labels_overlay_rows_follow_label_order():
    x = torch.rand(3, 784)
    y = overlay_all_labels(x)
    assert y.shape == (30, 784)
    for n in range(3):
        for c in range(10):
            assert torch.equal(y[n * 10 + c], overlay(x[n:n + 1], torch.tensor([c]))[0])


def test_random_wrong_labels_never_true_and_cover_all_wrong_labels():
    labels = torch.arange(10).repeat(2000)
    neg = random_wrong_labels(labels, 10, torch.Generator().manual_seed(0))
    assert not (neg == labels).any()
    for c in range(10):
        assert set(neg[labels == c].tolist()) == set(range(10)) - {c}


def test_hardest_wrong_label_is_best_rated_wrong_one():
    scores = torch.tensor([[9.0, 5.0, 7.0], [1.0, 2.0, 3.0], [0.0, 8.0, 8.5]])
    labels = torch.tensor([0, 2, 2])
    assert hardest_wrong_labels(scores, labels).tolist() == [2, 1, 1]


@pytest.mark.parametrize("strategy", ["random", "fixed", "adaptive"])
def test_negative_strategies_refresh_as_specified(strategy):
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(1))
    scores = torch.rand(500, 10, generator=torch.Generator().manual_seed(2))
    neg = NegativeLabels(strategy, labels, 10, seed=3)
    first = neg.for_chapter(0).clone()
    assert neg.scores_after(0, splits=2) == (strategy == "adaptive")
    assert not neg.scores_after(1, splits=2)
    if strategy == "adaptive":
        assert neg.score(0, scores) == 1
    second = neg.for_chapter(1).clone()
    for n in (first, second):
        assert not (n == labels).any()
    if strategy == "fixed":
        assert torch.equal(first, second)
    elif strategy == "random":
        assert not torch.equal(first, second)
    else:
        assert torch.equal(first, NegativeLabels("random", labels, 10, seed=3).for_chapter(0))
        assert torch.equal(second, hardest_wrong_labels(scores, labels))


def test_adaptive_negatives_with_a_lag_use_the_network_lag_chapters_back():
    labels = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(1))
    rnd = NegativeLabels("random", labels, 10, seed=3)
    neg = NegativeLabels("adaptive", labels, 10, seed=3, lag=2)
    scores = [torch.rand(300, 10, generator=torch.Generator().manual_seed(10 + j)) for j in range(3)]
    # chapters 0 and 1 come before any scored network: the random draws of those chapters
    assert [neg.scored_from(j) for j in range(4)] == [None, None, 0, 1]
    assert torch.equal(neg.for_chapter(0), rnd.for_chapter(0))
    assert neg.score(0, scores[0]) == 2
    assert torch.equal(neg.for_chapter(1), rnd.for_chapter(1))
    assert neg.score(1, scores[1]) == 3
    assert torch.equal(neg.for_chapter(2), hardest_wrong_labels(scores[0], labels))
    assert torch.equal(neg.for_chapter(3), hardest_wrong_labels(scores[1], labels))
    with pytest.raises(KeyError, match="chapter 4 were never scored .after chapter 2"):
        neg.for_chapter(4)
    with pytest.raises(ValueError, match="lag"):
        NegativeLabels("adaptive", labels, 10, seed=3, lag=0)


def test_chapters_split_epochs_evenly():
    cs = chapters(6, 3)
    assert [list(c.epochs) for c in cs] == [[1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError):
        chapters(5, 2)


def test_lr_cooldown_after_half():
    assert [lr_factor(e, 10) for e in (1, 5)] == [1.0, 1.0]
    assert lr_factor(6, 10) == pytest.approx(1.0)
    assert lr_factor(10, 10) == pytest.approx(0.2)
    assert lr_factor(8, 10, cooldown=False) == 1.0
