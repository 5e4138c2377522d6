"""CoreShare: a trainer's threads while others share its machine, and solo threads when alone."""
import torch

from dff_ros.cores import RECHECK_BATCHES, CoreShare


def test_solo_threads_only_while_alone_and_given_back():
    torch.set_num_threads(1)
    try:
        cores = CoreShare(3)
        assert (cores.own, cores.solo) == (1, 3)
        assert cores.use(alone=True) == 3 and torch.get_num_threads() == 3
        assert cores.use(alone=False) == 1 and torch.get_num_threads() == 1
        cores.use(alone=True)
        cores.release()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(2)


def test_no_more_solo_threads_than_its_own_changes_nothing():
    torch.set_num_threads(2)
    cores = CoreShare(2)
    assert cores.solo == 0
    torch.set_num_threads(1)   # set by someone else later: left alone
    try:
        assert cores.use(alone=True) == 1 and cores.use(alone=False) == 1
        cores.release()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(2)


def test_recheck_asks_every_few_batches_and_switches_once():
    torch.set_num_threads(1)
    asked = []

    def alone():
        asked.append(True)
        return True

    try:
        cores = CoreShare(2)
        assert [cores.recheck(b, alone) for b in range(1, RECHECK_BATCHES)] == [1] * (RECHECK_BATCHES - 1)
        assert asked == []
        assert cores.recheck(RECHECK_BATCHES, alone) == 2 and asked == [True]
        assert cores.recheck(2 * RECHECK_BATCHES, alone) == 2 and asked == [True], "already solo: not asked"
        cores.release()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(2)
