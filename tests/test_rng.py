"""Per-sample random streams: a sample's augmentations follow the run seed,
the epoch and its position in the epoch, whichever process loads it."""
import copy
import random

import numpy as np
import pytest
import torch
from conftest import small_config, toy_config
from mmengine.runner import Runner
from probes import digest, read_samples

import mmaction_multigrid  # noqa: F401  (installs the switch)
from mmaction_multigrid.datasets.rng import sample_seed
from mmaction_multigrid.datasets.wrapper import MultiGridDataset, ShapedIndex

I3D = 'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py'


def test_same_inputs_with_any_workers(videos, tmp_path):
    """0 workers, 2 workers restarted every epoch and 2 persistent workers
    (prefetching across epochs) feed the model the same pixels."""
    runs, weights = {}, {}
    for name, loader in (('main', dict(num_workers=0)),
                         ('workers',
                          dict(num_workers=2, persistent_workers=False)),
                         ('persistent',
                          dict(num_workers=2, persistent_workers=True))):
        runner = Runner.from_cfg(
            small_config(
                videos,
                tmp_path / name,
                options={
                    f'train_dataloader.{k}': v
                    for k, v in loader.items()
                }))
        runner.train()
        runs[name] = [(r['epoch'], r['iter'], r['files'], r['inputs'])
                      for r in read_samples(tmp_path / name)]
        weights[name] = runner.model.state_dict()
    assert [r[:2] for r in runs['main']] == [(e, i)
                                             for e, n in enumerate((1, 3, 6))
                                             for i in range(n)]
    assert runs['workers'] == runs['main']
    assert runs['persistent'] == runs['main']
    # Batches of [16], [8, 4, 2] and [4, 2, 1] * 2 clips.
    assert sum(len(r[3]) for r in runs['main']) == 44
    for name in ('workers', 'persistent'):
        for key, value in weights['main'].items():
            assert torch.equal(value, weights[name][key]), (name, key)


@pytest.fixture(scope='module')
def dataset(videos):
    cfg = toy_config(I3D, videos)
    return MultiGridDataset(copy.deepcopy(cfg.train_dataloader.dataset))


def _load(dataset, index, seed):
    # 16 frames of 32x32: the frame offset, crop scale and flip all vary.
    return digest(dataset[ShapedIndex(index, 16, 2, 32, 32, seed)]['inputs'])


def test_seed_decides_the_augmentation(dataset):
    seeds = [
        sample_seed(0, epoch, position) for epoch in range(4)
        for position in range(4)
    ]
    assert len(set(seeds)) == len(seeds)
    first = [_load(dataset, 3, seed) for seed in seeds]
    # Other epochs and positions: other crops, flips and frames.
    assert len(set(first)) >= 12
    # Loaded again, in reverse order, after unseeded loads: the same clips.
    dataset[5]
    assert [_load(dataset, 3, seed) for seed in reversed(seeds)] == first[::-1]
    # Another run seed: other augmentations at the same places (about 200
    # distinct ones here, so any one of them may coincide, not all four).
    other = [_load(dataset, 3, sample_seed(1, 0, p)) for p in range(4)]
    assert other != first[:4]


def test_seeded_sample_leaves_the_process_streams(dataset):
    """A sample loaded in the training process (num_workers=0) does not
    move the streams that dropout and other training draws use."""
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    _load(dataset, 0, sample_seed(0, 0, 0))
    assert (random.random(), np.random.rand(),
            torch.rand(1).item()) == expected
