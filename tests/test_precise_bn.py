"""Tests for precise BN (mmaction_multigrid.engine.precise_bn)."""
import itertools
import logging
import os
import re
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

from mmaction_multigrid.engine.precise_bn import PreciseBNHook, update_bn_stats
from mmaction_multigrid.models.sub_batch_bn import SubBatchNorm3d

C = 4


class ToyModel(nn.Module):

    def __init__(self, bn: nn.Module = None):
        super().__init__()
        self.conv = nn.Conv3d(3, C, 1)
        self.bn = bn if bn is not None else nn.BatchNorm3d(C, momentum=0.3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.bn(self.conv(x)))


def _model(bn: nn.Module = None) -> ToyModel:
    torch.manual_seed(0)
    model = ToyModel(bn)
    with torch.no_grad():  # stale statistics that must be replaced
        model.bn.running_mean.fill_(5.0)
        model.bn.running_var.fill_(9.0)
    return model


def _batches(num: int, seed: int = 0, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n, 3, 2, 4, 4, generator=g) * 3 + 1 for _ in range(num)
    ]


def _expected(model: ToyModel, batches):
    """Mean of per-batch means and of per-batch unbiased variances."""
    with torch.no_grad():
        feats = [model.conv(b).transpose(0, 1).reshape(C, -1) for b in batches]
    mean = torch.stack([f.mean(1) for f in feats]).mean(0)
    var = torch.stack([f.var(1, unbiased=True) for f in feats]).mean(0)
    return mean, var


def test_exact_average_and_restored_state():
    model = _model()
    model.eval()
    batches = _batches(5)
    tracked = int(model.bn.num_batches_tracked)
    used = update_bn_stats(model, batches, num_iters=5)
    assert used == 5
    mean, var = _expected(model, batches)
    torch.testing.assert_close(
        model.bn.running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.bn.running_var, var, atol=1e-5, rtol=1e-5)
    assert model.bn.momentum == 0.3
    assert not model.training and not model.bn.training
    assert not model.drop.training
    assert int(model.bn.num_batches_tracked) == tracked


def test_custom_forward_train_mode_and_frozen_bn():
    model = _model()
    model.train()
    batches = [dict(inputs=b) for b in _batches(3)]
    calls = []

    def forward(batch):
        calls.append(batch)
        return model(batch['inputs'])

    assert update_bn_stats(model, iter(batches), 3, forward=forward) == 3
    assert len(calls) == 3
    mean, var = _expected(model, [b['inputs'] for b in batches])
    torch.testing.assert_close(
        model.bn.running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.bn.running_var, var, atol=1e-5, rtol=1e-5)
    assert model.training and model.bn.training

    # A BN layer in eval mode inside a model in training mode is frozen.
    model.bn.eval()
    frozen_mean = model.bn.running_mean.clone()
    update_bn_stats(model, _batches(2, seed=3), 2)
    assert torch.equal(model.bn.running_mean, frozen_mean)
    assert not model.bn.training


def test_sub_batch_bn_layer():
    bn = SubBatchNorm3d(C, base_size=2)
    model = _model(bn)
    batches = _batches(4, n=6)
    assert update_bn_stats(model, batches, 4) == 4
    means, variances = [], []
    with torch.no_grad():
        for b in batches:
            # 3 groups of 2 clips: clip i in group i % 3.
            groups = [
                g.transpose(0, 1).reshape(C, -1)
                for g in (model.conv(b)[i::3] for i in range(3))
            ]
            m = torch.stack([g.mean(1) for g in groups])
            v = torch.stack([g.var(1, unbiased=True) for g in groups])
            means.append(m.mean(0))
            variances.append(v.mean(0) + m.var(0, unbiased=False))
    torch.testing.assert_close(
        bn.running_mean, torch.stack(means).mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        bn.running_var, torch.stack(variances).mean(0), atol=1e-5, rtol=1e-5)
    assert bn.split_stats() is None  # next training step starts from these
    assert bn.momentum == 0.1


def test_invalid_num_iters():
    model = _model()
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match='num_iters'):
            update_bn_stats(model, _batches(2), bad)


class _ListHandler(logging.Handler):

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_fewer_batches_than_requested():
    from mmengine.logging import MMLogger
    model = _model()
    batches = _batches(3)
    logger = MMLogger.get_current_instance()
    handler = _ListHandler()
    logger.addHandler(handler)
    try:
        used = update_bn_stats(model, batches, num_iters=10)
    finally:
        logger.removeHandler(handler)
    assert used == 3
    assert any('only 3' in m for m in handler.messages)
    mean, var = _expected(model, batches)
    torch.testing.assert_close(
        model.bn.running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.bn.running_var, var, atol=1e-5, rtol=1e-5)

    # No batch at all: statistics are left alone.
    before = model.bn.running_mean.clone()
    assert update_bn_stats(model, [], num_iters=2) == 0
    assert torch.equal(model.bn.running_mean, before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        'gloo',
        init_method=f'tcp://127.0.0.1:{port}',
        rank=rank,
        world_size=world_size)
    try:
        model = _model()
        used = update_bn_stats(model, _batches(3, seed=10 + rank), 3)
        torch.save(
            dict(
                used=used,
                mean=model.bn.running_mean.clone(),
                var=model.bn.running_var.clone()),
            os.path.join(out_dir, f'rank{rank}.pth'))
    finally:
        dist.destroy_process_group()


def test_distributed_average(tmp_path):
    world_size = 2
    mp.spawn(
        _worker,
        args=(world_size, _free_port(), str(tmp_path)),
        nprocs=world_size,
        join=True)
    results = [
        torch.load(tmp_path / f'rank{r}.pth') for r in range(world_size)
    ]
    assert all(r['used'] == 3 for r in results)
    torch.testing.assert_close(
        results[0]['mean'], results[1]['mean'], atol=0, rtol=0)
    torch.testing.assert_close(
        results[0]['var'], results[1]['var'], atol=0, rtol=0)
    local = []
    for rank in range(world_size):
        model = _model()
        update_bn_stats(model, _batches(3, seed=10 + rank), 3)
        local.append((model.bn.running_mean, model.bn.running_var))
    torch.testing.assert_close(
        results[0]['mean'], (local[0][0] + local[1][0]) / 2,
        atol=1e-5,
        rtol=1e-5)
    torch.testing.assert_close(
        results[0]['var'], (local[0][1] + local[1][1]) / 2,
        atol=1e-5,
        rtol=1e-5)


# When PreciseBNHook runs, through a real MMEngine Runner: a small model
# with a BN layer, 6 epochs of 2 iterations.


class _Vectors(Dataset):
    """Eight random 2-vectors with labels."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(8, 2, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        return dict(inputs=self.x[idx], labels=idx % 2)


class _BNModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, C)
        self.bn = nn.BatchNorm1d(C)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.bn(self.fc(inputs))
        if mode == 'loss':
            return dict(loss=out.pow(2).mean())
        return [dict(score=row) for row in out]


class _NoMetric(BaseMetric):

    def process(self, data_batch, data_samples):
        self.results.extend(data_samples)

    def compute_metrics(self, results):
        return dict(count=len(results))


_NAMES = itertools.count()


def _train(tmp_path,
           precise: PreciseBNHook,
           checkpoint: dict,
           val: dict = None) -> str:
    """Train the toy model for 6 epochs and return the log text.

    ``val``: the train loop's validation settings (``val_interval``,
    ``val_begin``, ``dynamic_intervals``); None trains without validation.
    """
    loader = dict(
        dataset=_Vectors(),
        sampler=dict(type='DefaultSampler', shuffle=True),
        batch_size=4,
        collate_fn=dict(type='default_collate'))
    val_options = {} if val is None else dict(
        val_dataloader=dict(
            loader, sampler=dict(type='DefaultSampler', shuffle=False)),
        val_cfg=dict(),
        val_evaluator=[_NoMetric()])
    runner = Runner(
        model=_BNModel(),
        work_dir=str(tmp_path),
        experiment_name=f'precise_bn_{next(_NAMES)}',
        train_dataloader=loader,
        train_cfg=dict(by_epoch=True, max_epochs=6, **(val or {})),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', **checkpoint)),
        custom_hooks=[precise],
        randomness=dict(seed=0),
        **val_options)
    runner.train()
    with open(f'{runner.log_dir}/{runner.timestamp}.log') as f:
        return f.read()


def _recomputed(log: str) -> set:
    """1-based epochs after which the hook recomputed BN statistics."""
    return {int(e) for e in re.findall(r'Precise BN after epoch (\d+):', log)}


def _validated(log: str) -> set:
    """1-based epochs after which the train loop validated."""
    return {int(e) for e in re.findall(r'Epoch\(val\) \[(\d+)\]', log)}


def _checkpoint_warnings(log: str) -> list:
    """The log's warning lines about checkpoints precise BN does not
    precede."""
    return [
        line for line in log.splitlines() if 'WARNING' in line and (
            'precise BN did not recompute' in line or 'by_epoch=False' in line)
    ]


def test_interval_and_validation_epochs(tmp_path):
    # interval=3 -> after epochs 3, 6; val_interval=2 -> validations after
    # 2, 4, 6; the last epoch is 6.
    log = _train(
        tmp_path,
        PreciseBNHook(num_iters=1, interval=3),
        dict(interval=6),
        val=dict(val_interval=2))
    assert _validated(log) == {2, 4, 6}
    assert _recomputed(log) == {2, 3, 4, 6}
    assert not _checkpoint_warnings(log)


# The train loop's validation settings -> 1-based epochs it validates after.
VALIDATION_CASES = [
    # Every 3rd epoch, and the last.
    pytest.param(dict(val_interval=3), {3, 6}, id='fixed'),
    # After each epoch MMEngine takes the interval in force at (completed
    # epochs + 1): 3 after epochs 1-3, 2 from epoch 4 on (4 + 1 >= milestone
    # 5), so validations after 3, 4 and 6.
    pytest.param(
        dict(val_interval=3, dynamic_intervals=[(5, 2)]), {3, 4, 6},
        id='dynamic'),
    # Interval 1 from epoch 3 on (3 + 1 >= milestone 4), but not before
    # val_begin=4.
    pytest.param(
        dict(val_interval=3, val_begin=4, dynamic_intervals=[(4, 1)]),
        {4, 5, 6},
        id='dynamic-from-val-begin'),
]


@pytest.mark.parametrize('val,epochs', VALIDATION_CASES)
def test_follows_dynamic_validation_intervals(tmp_path, val, epochs):
    log = _train(
        tmp_path, PreciseBNHook(num_iters=1), dict(interval=6), val=val)
    assert _validated(log) == epochs
    assert _recomputed(log) == epochs


def test_warns_once_about_stale_checkpoints(tmp_path):
    # Checkpoints after epochs 2, 4, 6; precise BN after 3, 6 only.
    log = _train(tmp_path / 'stale', PreciseBNHook(num_iters=1, interval=3),
                 dict(interval=2))
    assert _recomputed(log) == {3, 6}
    (warning, ) = _checkpoint_warnings(log)
    assert '2 checkpoint(s), the first after epoch 2' in warning
    assert 'default_hooks.checkpoint.interval=2' in warning
    assert 'multi_grid.precise_bn.interval=3' in warning
    assert 'multi_grid.precise_bn.interval to a divisor of 2' in warning

    # Intervals that agree, or validations that cover the checkpoints.
    for name, precise, checkpoint, val in [
        ('agree', 3, dict(interval=3), None),
        ('divisor', 1, dict(interval=2), None),
        ('validation', None, dict(interval=4), dict(val_interval=2)),
    ]:
        log = _train(tmp_path / name,
                     PreciseBNHook(num_iters=1, interval=precise), checkpoint,
                     val)
        assert not _checkpoint_warnings(log), name


def test_warns_about_iteration_checkpoints(tmp_path):
    log = _train(tmp_path, PreciseBNHook(num_iters=1),
                 dict(interval=2, by_epoch=False))
    assert _recomputed(log) == {6}
    (warning, ) = _checkpoint_warnings(log)
    assert 'default_hooks.checkpoint.by_epoch=False' in warning
