"""Robustness: corrupt videos, too little data, batch size 1, drop_last=False,
worker processes, --amp and auto_scale_lr, all through the real Runner."""
import contextlib
import os
import os.path as osp
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import scheduled, small_config
from mmaction.datasets import VideoDataset
from mmaction.registry import OPTIM_WRAPPERS, TRANSFORMS
from mmcv.transforms import BaseTransform
from mmengine.dataset import Compose
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from probes import read_samples

import mmaction_multigrid  # noqa: F401  (installs the switch)
from mmaction_multigrid import convert_config
from mmaction_multigrid.datasets.rng import seeded
from mmaction_multigrid.datasets.wrapper import (MultiGridDataset, ShapedIndex,
                                                 SkipBroken)
from mmaction_multigrid.tools.synthetic import dataset_cfg, make_dataset

# Stock E=2, milestone 1: three multigrid epochs at per-GPU batches
# [16, 8, 8], [8, 4, 2] and [4, 2, 1] clips (batch_size=1).


def log_text(runner):
    return '\n'.join(
        open(osp.join(runner.log_dir, f)).read()
        for f in os.listdir(runner.log_dir) if f.endswith('.log'))


@pytest.fixture(scope='module')
def corrupt_videos(tmp_path_factory):
    """16 good videos, one truncated mp4 and one garbage file."""
    return make_dataset(
        str(tmp_path_factory.mktemp('corrupt')),
        videos_per_class=4,
        num_frames=40,
        size=(48, 64),
        corrupt=2)


def test_corrupt_videos_are_skipped_keeping_the_shape(corrupt_videos,
                                                      tmp_path):
    runner = Runner.from_cfg(small_config(corrupt_videos, tmp_path))
    runner.train()
    got = read_samples(tmp_path)
    # 18 entries in the list: every batch has the scheduled size and shape.
    assert [(r['epoch'], r['iter'], r['shape']) for r in got] == \
        scheduled(18)
    assert runner.epoch == runner.max_epochs
    for record in got:
        assert len(record['files']) == record['shape'][0]
        assert not any('corrupt' in f for f in record['files'])
    log = log_text(runner)
    skipped = [line for line in log.splitlines() if 'corrupt_00' in line]
    assert skipped and all('WARNING' in line for line in skipped)
    assert any('corrupt_000.mp4' in line or 'corrupt_001.mp4' in line
               for line in skipped)


@TRANSFORMS.register_module(force=True)
class FailOn(BaseTransform):
    """Raises on every sample whose file name contains ``marker`` (``''``:
    every sample), as a buggy transform would; counts its calls."""

    calls = 0

    def __init__(self, marker: str = '') -> None:
        self.marker = marker

    def transform(self, results: dict) -> dict:
        type(self).calls += 1
        if self.marker in str(results.get('filename', '')):
            raise ZeroDivisionError(f'FailOn: a bug at {self.marker!r}')
        return results


@pytest.mark.parametrize('workers', [0, 2])
def test_transform_bug_stops_the_run_with_its_error(videos, tmp_path, workers):
    """A transform that raises on every sample stops the run at the third
    sample with its own error, not after 1000 refetches with MMEngine's
    'Cannot find valid image'."""
    cfg = small_config(
        videos, tmp_path, options={'train_dataloader.num_workers': workers})
    cfg.train_dataloader.dataset.pipeline.insert(3, dict(type='FailOn'))
    FailOn.calls = 0
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ZeroDivisionError, match="FailOn: a bug at ''"):
        runner.train()
    assert runner.iter == 0
    if workers == 0:
        assert FailOn.calls == SkipBroken.FAILURES_AT_START
        log = log_text(runner)
        assert log.count('Skipping unreadable sample') == 2
        assert '3 samples failed in a row before any loaded' in log


def test_failures_in_a_row():
    """Skipped while some sample loads in between; raised at 3 failures in
    a row before the first sample loads, at 10 afterwards."""
    pipeline = SkipBroken(Compose([dict(type='FailOn', marker='bad')]))

    def load(name):
        return pipeline(dict(filename=name))

    assert load('bad_0') is None and load('bad_1') is None
    assert load('good_0') is not None
    for k in range(SkipBroken.FAILURES_IN_A_ROW - 1):
        assert load(f'bad_{k}') is None
    assert load('good_1') is not None  # the count starts again
    for k in range(SkipBroken.FAILURES_IN_A_ROW - 1):
        assert load(f'bad_{k}') is None
    with pytest.raises(ZeroDivisionError):
        load('bad_last')
    fresh = SkipBroken(Compose([dict(type='FailOn', marker='bad')]))
    assert fresh(dict(filename='bad_0')) is None
    assert fresh(dict(filename='bad_1')) is None
    with pytest.raises(ZeroDivisionError, match="'bad'"):
        fresh(dict(filename='bad_2'))


def _failing_dataset(videos, marker, **options):
    """MultiGridDataset over the videos with a deterministic pipeline that
    fails where ``FailOn(marker)`` does."""
    init_default_scope('mmaction')
    pipeline = [
        dict(type='DecordInit'),
        dict(type='FailOn', marker=marker),
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
    return MultiGridDataset(dict(dataset_cfg(videos, pipeline), **options))


def test_skipped_sample_is_refetched_by_the_wrapper(videos, monkeypatch):
    """The wrapper replaces a skipped sample as MMEngine's BaseDataset
    would (the same random draw, the leaf's ``max_refetch``, its message),
    without the leaf's ``__getitem__``."""

    def leaf_getitem(self, idx):
        raise AssertionError('the wrapped dataset loaded a sample')

    monkeypatch.setattr(VideoDataset, '__getitem__', leaf_getitem)
    ds = _failing_dataset(videos, '00_000')  # sample 0
    with seeded(5):
        other = np.random.randint(0, len(ds))
    assert other != 0
    got = ds[ShapedIndex(0, 4, 4, 16, 16, 5)]
    want = ds[ShapedIndex(other, 4, 4, 16, 16)]
    assert torch.equal(got['inputs'], want['inputs'])
    assert got['data_samples'].gt_labels.item == \
        want['data_samples'].gt_labels.item
    ds = _failing_dataset(videos, '', max_refetch=1)
    with pytest.raises(Exception, match='Cannot find valid image after 1!'):
        ds[ShapedIndex(3, 4, 4, 16, 16, 5)]


def test_too_little_data_fails_before_training(videos, tmp_path):
    # Per-GPU batch 2: the first stage needs batches of 32 clips, the data
    # set has 16.
    runner = Runner.from_cfg(small_config(videos, tmp_path, batch_size=2))
    with pytest.raises(ValueError) as info:
        runner.train()
    message = str(info.value)
    assert 'train_dataloader.batch_size' in message
    assert 'drop_last' in message and '16 samples' in message
    # It fails when the train loop is built: no iteration ran.
    assert 'Epoch(train)' not in log_text(runner)
    assert not osp.exists(osp.join(tmp_path, 'samples_rank0.jsonl'))


def test_drop_last_false_with_persistent_workers(videos, tmp_path):
    """drop_last=False: every sample once per epoch, the last batch
    partial; two persistent worker processes load every shape."""
    cfg = small_config(
        videos,
        tmp_path,
        options={
            'train_dataloader.drop_last': False,
            'train_dataloader.num_workers': 2,
            'train_dataloader.persistent_workers': True
        })
    runner = Runner.from_cfg(cfg)
    runner.train()
    got = read_samples(tmp_path)
    want = scheduled(16, drop_last=False)
    assert [r['epoch'] for r in got] == [w[0] for w in want]
    assert [r['iter'] for r in got] == [w[1] for w in want]
    for epoch in range(3):
        records = [r for r in got if r['epoch'] == epoch]
        files = Counter(f for r in records for f in r['files'])
        assert len(files) == 16 and set(files.values()) == {1}, epoch
        sizes = [r['shape'][0] for r in records]
        planned = [w[2][0] for w in want if w[0] == epoch]
        assert sizes[:-1] == planned[:-1]  # full batches, then the rest
        assert sizes[-1] == 16 - sum(sizes[:-1]) <= planned[-1]
        # Every batch, the partial one too, has its scheduled clip shape.
        assert [r['shape'][1:]
                for r in records] == [w[2][1:] for w in want if w[0] == epoch]
    # Batch size 1 at the default shape: the last short-cycle step.
    assert [1, 3, 32, 32, 32] in [r['shape'] for r in got]
    assert runner.train_dataloader.persistent_workers


def test_persistent_workers_without_workers_is_refused(videos, tmp_path):
    """num_workers=0 with persistent_workers=True: PyTorch's own error, as
    for a stock config, before any iteration."""
    cfg = small_config(
        videos,
        tmp_path,
        options={'train_dataloader.persistent_workers': True})
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match='persistent_workers'):
        runner.train()
    assert not osp.exists(osp.join(tmp_path, 'samples_rank0.jsonl'))


@OPTIM_WRAPPERS.register_module(force=True)
class CPUAutocastOptimWrapper(OptimWrapper):
    """What ``AmpOptimWrapper`` does in the forward (autocast to float16),
    on CPU; MMEngine's own AmpOptimWrapper asserts a GPU. (bfloat16 fails
    in MMAction2's head, which turns scores into NumPy arrays.)"""

    @contextlib.contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast(
                'cpu', dtype=torch.float16):
            yield


def test_amp(videos, tmp_path):
    # What tools/train.py --amp does to the config.
    cfg = small_config(videos, tmp_path / 'amp')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'
    converted = convert_config(cfg)
    assert converted.optim_wrapper == cfg.optim_wrapper
    assert converted.param_scheduler[0]['type'] == 'MultiGridLR'
    runner = Runner.from_cfg(cfg)
    # MMEngine 0.10.7's AmpOptimWrapper needs a GPU (NPU, MLU, MUSA); on
    # this CPU machine it fails in MMEngine, after the multigrid conversion.
    if not torch.cuda.is_available():
        with pytest.raises(AssertionError, match='only available'):
            runner.train()
    else:  # on a GPU: float16 AMP with dynamic loss scaling
        runner.train()
        got = read_samples(tmp_path / 'amp')
        assert [(r['epoch'], r['iter'], r['shape']) for r in got] == \
            scheduled(16)
        assert all(torch.isfinite(p).all() for p in runner.model.parameters())
    # Mixed precision itself (autocast to float16, here on CPU) trains the
    # multigrid shapes with sub-batch BN.
    cfg = small_config(videos, tmp_path / 'autocast')
    cfg.optim_wrapper.type = 'CPUAutocastOptimWrapper'
    runner = Runner.from_cfg(cfg)
    runner.train()
    got = read_samples(tmp_path / 'autocast')
    assert [(r['epoch'], r['iter'], r['shape']) for r in got] == \
        scheduled(16)
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())


def test_auto_scale_lr_composes_with_multigrid_lr(videos, tmp_path):
    """MMEngine scales the base LR once by world_size * batch_size /
    base_batch_size (the stock per-GPU batch); multigrid then multiplies
    it by its relative factors."""
    cfg = small_config(
        videos,
        tmp_path,
        options={'auto_scale_lr': dict(enable=True, base_batch_size=4)})
    runner = Runner.from_cfg(cfg)
    runner.train()
    got = read_samples(tmp_path)
    want = scheduled(16, lr=True)
    assert len(got) == len(want)
    for r, w in zip(got, want):
        assert r['lr'] == pytest.approx(w[3] * (1 * 1 / 4), rel=1e-9)
    assert 'Scaling the original LR by 0.25' in log_text(runner)
