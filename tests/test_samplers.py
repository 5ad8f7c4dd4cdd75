"""Tests of ShortCycleBatchSampler over a real mmengine DefaultSampler."""
import math

import mmengine.dataset.sampler as sampler_module
import pytest
from conftest import schedule_plan
from mmengine.dataset import DefaultSampler

import mmaction_multigrid  # noqa: F401
from mmaction_multigrid.datasets.rng import sample_seed
from mmaction_multigrid.datasets.sampler import ShortCycleBatchSampler
from mmaction_multigrid.datasets.wrapper import ShapedIndex

# I3D-like: T=32, r=2, S=224, E=100, milestones [40, 80]; stage ends
# 32 47 61 68 100 115 129 136 150 (reference worked example).
SCHEDULE = dict(
    clip_len=32,
    frame_interval=2,
    size=[224, 224],
    max_epochs=100,
    milestones=[40, 80])
B = 2
# epoch -> [(batch size, (clip_len, frame_interval, h, w))] of the short
# cycle, hand-derived from the reference (base shapes (8,8,158),
# (4,16,158), (2,16,224), (1,32,224); k = round((s_base/(f*224))**2)).
CYCLES = {
    0: [(32, (8, 8, 112, 112)), (16, (8, 8, 158, 158)),
        (16, (8, 8, 158, 158))],
    40: [(16, (16, 4, 112, 112)), (8, (16, 4, 158, 158)),
         (8, (16, 4, 158, 158))],
    50: [(16, (16, 4, 112, 112)), (8, (16, 4, 158, 158)),
         (4, (16, 4, 224, 224))],
    62: [(8, (32, 2, 112, 112)), (4, (32, 2, 158, 158)),
         (2, (32, 2, 224, 224))],
    145: [(8, (32, 2, 112, 112)), (4, (32, 2, 158, 158)),
          (2, (32, 2, 224, 224))],
}


def _batch_sampler(n, drop_last=True, seed=0, **schedule):
    sampler = DefaultSampler(list(range(n)), shuffle=True, seed=seed)
    return ShortCycleBatchSampler(
        sampler,
        batch_size=B,
        drop_last=drop_last,
        plan=schedule_plan(B, **dict(SCHEDULE, **schedule)))


def _check_batches(batches, cycle):
    for k, batch in enumerate(batches):
        size, shape = cycle[k % len(cycle)]
        assert all(isinstance(i, ShapedIndex) for i in batch)
        assert all(tuple(i[1:5]) == shape for i in batch), (k, batch[0])
        if k < len(batches) - 1:
            assert len(batch) == size


@pytest.mark.parametrize('epoch', sorted(CYCLES))
def test_cycle_per_epoch(epoch):
    bs = _batch_sampler(500)
    bs.set_epoch(epoch)
    batches = list(bs)
    cycle = CYCLES[epoch]
    mean = sum(s for s, _ in cycle) / 3
    assert len(batches) == math.floor(500 / mean) == len(bs)
    _check_batches(batches, cycle)
    assert [len(b) for b in batches
            ] == [cycle[k % 3][0] for k in range(len(batches))]


def test_cycle_restarts_every_epoch():
    bs = _batch_sampler(100)  # epoch 0: [32,16,16]: 4 batches, cycle 1.33x
    for epoch in (0, 1, 0, 45, 50, 50):
        bs.set_epoch(epoch)
        sizes = [len(b) for b in bs]
        expected = [
            s for s, _ in (CYCLES[0] if epoch < 32 else CYCLES[40] if epoch <
                           47 else CYCLES[50])
        ]
        assert sizes[:3] == expected
    # Iterating twice in the same epoch restarts too.
    assert [len(b) for b in bs] == [len(b) for b in bs]


@pytest.mark.parametrize('n', [1, 5, 17, 21, 64, 85, 86, 90, 100, 101, 257])
@pytest.mark.parametrize('drop_last', [True, False])
@pytest.mark.parametrize('epoch', [0, 62])
def test_len_matches_iteration(n, drop_last, epoch):
    bs = _batch_sampler(n, drop_last=drop_last)
    bs.set_epoch(epoch)
    batches = list(bs)
    assert len(bs) == len(batches)
    cycle = CYCLES[epoch]
    sizes = [s for s, _ in cycle]
    if drop_last:
        assert len(batches) == math.floor(n / (sum(sizes) / 3))
        # Every batch full, of its cycle size.
        assert [len(b) for b in batches
                ] == [sizes[k % 3] for k in range(len(batches))]
    else:
        # Every sample exactly once; only the last batch may be short.
        flat = [i.index for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert all(len(b) == sizes[k % 3] for k, b in enumerate(batches[:-1]))
        assert 0 < len(batches[-1]) <= sizes[(len(batches) - 1) % 3]
    _check_batches(batches, cycle)


def test_shuffled_order_follows_sampler():
    bs = _batch_sampler(64)
    order = list(bs.sampler)
    flat = [i.index for b in bs for i in b]
    assert flat == order[:len(flat)]
    bs.sampler.set_epoch(1)
    assert [i.index for b in bs for i in b] != flat


@pytest.mark.parametrize('n,epoch', [(200, 0), (180, 0), (171, 0), (64, 62),
                                     (101, 50)])
def test_two_ranks(monkeypatch, n, epoch):
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setattr(
            sampler_module, 'get_dist_info', lambda rank=rank: (rank, 2))
        bs = _batch_sampler(n)
        assert bs.sampler.rank == rank and bs.sampler.world_size == 2
        bs.set_epoch(epoch)
        per_rank.append((list(bs.sampler), list(bs), len(bs)))
    (order0, batches0, len0), (order1, batches1, len1) = per_rank
    assert len(batches0) == len(batches1) == len0 == len1
    cycle = CYCLES[epoch]
    for order, batches in ((order0, batches0), (order1, batches1)):
        _check_batches(batches, cycle)
        flat = [i.index for b in batches for i in b]
        # The epoch's own order, completed from its start when it runs out.
        assert flat == (order * 2)[:len(flat)]
    flat0 = {i.index for b in batches0 for i in b}
    flat1 = {i.index for b in batches1 for i in b}
    if n % 2 == 0:
        assert not flat0 & flat1
    else:
        # DefaultSampler's round-up pads with one index shared by the ranks.
        assert len(flat0 & flat1) <= 1
    # Same batch sizes on both ranks, iteration by iteration.
    assert [len(b) for b in batches0] == [len(b) for b in batches1]


@pytest.mark.parametrize('drop_last', [True, False])
def test_continue_until_runs_the_epochs_back_to_back(drop_last):
    """One iteration after continue_until equals the epochs iterated one by
    one, each with set_epoch on both samplers (as the stock loop does)."""
    batch_sampler = _batch_sampler(37, drop_last=drop_last)
    expected = []
    for epoch in range(30, 50):
        batch_sampler.set_epoch(epoch)
        batch_sampler.sampler.set_epoch(epoch)
        expected.append(list(batch_sampler))
    continuous = _batch_sampler(37, drop_last=drop_last)
    continuous.set_epoch(30)
    continuous.continue_until(50)
    got = list(continuous)
    assert got == [batch for epoch in expected for batch in epoch]
    assert len({tuple(b[0][1:5]) for b in got}) > 3  # several stages crossed
    continuous.continue_until(None)
    continuous.set_epoch(33)
    continuous.sampler.set_epoch(33)
    assert list(continuous) == expected[3]


def test_sample_seeds(monkeypatch):
    """Each sample's seed follows the sampler seed, the epoch and the
    sample's place in the epoch's global order: rank r's k-th sample is
    place 2k + r of 2 ranks; no two samples of the run share one."""
    seeds = {}
    for rank in (0, 1):
        monkeypatch.setattr(
            sampler_module, 'get_dist_info', lambda rank=rank: (rank, 2))
        bs = _batch_sampler(101, seed=5)
        for epoch in (0, 1, 62):
            bs.set_epoch(epoch)
            flat = [i.seed for b in bs for i in b]
            assert flat == [
                sample_seed(5, epoch, 2 * k + rank) for k in range(len(flat))
            ]
            assert flat == [i.seed for b in bs for i in b]  # again: same
            seeds[rank, epoch] = flat
    every = [s for flat in seeds.values() for s in flat]
    assert len(set(every)) == len(every)
    bs = _batch_sampler(101, seed=6)
    assert not {i.seed for b in bs for i in b} & set(every)


def test_no_sampler_seed_no_sample_seed():
    """A sampler without a seed (a plain torch sampler): samples draw from
    the loading process's streams, as without the plugin."""
    bs = ShortCycleBatchSampler(
        range(100), batch_size=B, plan=schedule_plan(B, **SCHEDULE))
    assert {i.seed for b in bs for i in b} == {None}


@pytest.mark.parametrize('drop_last', [True, False])
@pytest.mark.parametrize('epoch', [0, 62])
def test_chunks_join_to_the_batches(epoch, drop_last):
    whole = _batch_sampler(101, drop_last=drop_last)
    chunked = _batch_sampler(101, drop_last=drop_last)
    chunked.chunk_size = 3
    for bs in (whole, chunked):
        bs.set_epoch(epoch)
    batches = list(whole)
    chunks = iter(chunked)
    counts = chunked.chunk_counts(epoch)
    assert len(counts) == len(batches) == len(chunked)
    for batch, count in zip(batches, counts):
        parts = [next(chunks) for _ in range(count)]
        assert all(0 < len(p) <= 3 for p in parts)
        assert [i for p in parts for i in p] == batch
    assert next(chunks, None) is None
