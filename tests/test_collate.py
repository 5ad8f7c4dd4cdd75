"""multigrid_collate: pseudo_collate's batch, in one storage per field."""
import torch
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from torch.utils.data import DataLoader

from mmaction_multigrid import MultiGridDataset, ShapedIndex, multigrid_collate
from mmaction_multigrid.tools.synthetic import dataset_cfg

# Deterministic (test-mode sampling, centre crop): two loaders must agree.
PIPELINE = [
    dict(type='DecordInit'),
    dict(
        type='SampleFrames',
        clip_len=8,
        frame_interval=2,
        num_clips=1,
        test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 40)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]


def _dataset(videos):
    init_default_scope('mmaction')
    return MultiGridDataset(dataset_cfg(videos, PIPELINE))


def _labels(batch):
    return [s.gt_labels.item for s in batch['data_samples']]


def _storages(tensors):
    return {t.untyped_storage().data_ptr() for t in tensors}


def _assert_same_batch(got, want):
    assert got.keys() == want.keys()
    assert len(got['inputs']) == len(want['inputs'])
    for a, b in zip(got['inputs'], want['inputs']):
        assert torch.equal(a, b)
    for a, b in zip(_labels(got), _labels(want)):
        assert torch.equal(a, b)
    assert [s.metainfo for s in got['data_samples']
            ] == [s.metainfo for s in want['data_samples']]


def test_same_batch_one_storage_per_field(videos):
    dataset = _dataset(videos)
    samples = [dataset[ShapedIndex(i, 4, 4, 16, 16)] for i in range(6)]
    want = pseudo_collate([dict(s) for s in samples])
    got = multigrid_collate(samples)
    _assert_same_batch(got, want)
    assert len(_storages(got['inputs'])) == 1
    assert len(_storages(_labels(got))) == 1
    assert len(_storages(want['inputs'])) == 6  # what it replaces


def test_different_shapes_are_left_apart(videos):
    dataset = _dataset(videos)
    samples = [
        dataset[ShapedIndex(0, 4, 4, 16, 16)],
        dataset[ShapedIndex(1, 8, 2, 32, 32)]
    ]
    got = multigrid_collate(samples)
    assert [tuple(x.shape) for x in got['inputs']] == [(1, 3, 4, 16, 16),
                                                       (1, 3, 8, 32, 32)]
    assert len(_storages(got['inputs'])) == 2


def test_through_worker_processes(videos):
    dataset = _dataset(videos)
    batches = [[ShapedIndex(i, 4, 4, 16, 16) for i in range(k, k + 4)]
               for k in (0, 4, 8)]
    results = []
    for collate in (pseudo_collate, multigrid_collate):
        loader = DataLoader(
            dataset, batch_sampler=batches, num_workers=2, collate_fn=collate)
        results.append(list(loader))
    for got, want in zip(results[1], results[0]):
        _assert_same_batch(got, want)
        assert len(_storages(got['inputs'])) == 1
