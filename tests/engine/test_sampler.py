"""ResumableDistributedSampler: torch's order, exact mid-epoch resume, resume on another number of processes."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler

from vlpkit.engine import ResumableDistributedSampler


def _samplers(n, replicas, **kw):
    return [ResumableDistributedSampler(range(n), num_replicas=replicas, rank=r, **kw) for r in range(replicas)]


@pytest.mark.parametrize("n, replicas, drop_last", [(10, 1, False), (10, 3, False), (10, 3, True), (7, 4, False)])
def test_fresh_epoch_equals_torch_distributed_sampler(n, replicas, drop_last):
    for epoch in (0, 3):
        for rank in range(replicas):
            ours = ResumableDistributedSampler(range(n), replicas, rank, seed=5, drop_last=drop_last)
            ref = DistributedSampler(range(n), replicas, rank, seed=5, drop_last=drop_last)
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == list(ref) and len(ours) == len(ref)


def test_epoch_is_a_seeded_permutation():
    (s,) = _samplers(50, 1, seed=1)
    first = list(s)
    assert sorted(first) == list(range(50))
    assert list(_samplers(50, 1, seed=1)[0]) == first
    assert list(_samplers(50, 1, seed=2)[0]) != first
    s.set_epoch(1)
    assert list(s) != first


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), replicas=st.integers(1, 4), batch=st.integers(1, 5), epoch=st.integers(0, 3),
       drop_last=st.booleans(), frac=st.floats(0, 1))
def test_resume_mid_epoch_yields_exactly_the_rest(n, replicas, batch, epoch, drop_last, frac):
    samplers = _samplers(n, replicas, seed=7, drop_last=drop_last)
    for s in samplers:
        s.set_epoch(epoch)
    full = [list(s) for s in samplers]
    consumed = int(frac * len(samplers[0]))  # samples per process already read
    for s in samplers:
        assert s.advance(consumed) == consumed
    resumed = _samplers(n, replicas, seed=0, drop_last=drop_last)  # seed comes from the state
    for saved, new, order in zip(samplers, resumed, full):
        new.load_state_dict(saved.state_dict())
        assert list(new) == order[consumed:]
        assert len(new) == len(order) - consumed


def test_resume_on_a_different_number_of_processes_covers_the_rest():
    old = _samplers(23, 2, seed=3)
    order = old[0].global_order()  # padded to 24
    for s in old:
        s.advance(5)  # 10 global samples consumed
    state = old[0].state_dict()
    new = _samplers(23, 3, seed=3)
    for s in new:
        s.load_state_dict(state)
    served = Counter(i for s in new for i in s)
    expected = Counter(order[10:])
    assert expected - served == Counter()  # nothing left unread
    assert sum((served - expected).values()) < 3  # at most num_replicas - 1 padding repeats
    assert set(order[:10]).isdisjoint(set(served) - set(order[10:]))  # no consumed sample served again...
    assert len({len(s) for s in new}) == 1  # ...and every process gets the same count


def test_advance_clamps_at_the_end_of_the_epoch():
    (s,) = _samplers(10, 1)
    assert s.advance(4) == 4 and len(s) == 6
    assert s.advance(100) == 6 and len(s) == 0 and list(s) == []
    s.set_epoch(1)
    assert len(s) == 10 and s.position == 0
    with pytest.raises(ValueError, match="expected >= 0"):
        s.advance(-1)


def test_load_state_rejects_another_dataset():
    (s,) = _samplers(10, 1)
    (other,) = _samplers(11, 1)
    with pytest.raises(ValueError, match="dataset of 10 samples, this dataset has 11"):
        other.load_state_dict(s.state_dict())
    with pytest.raises(KeyError, match="position"):
        s.load_state_dict({"seed": 0, "epoch": 0, "dataset_size": 10})
