"""Tests for precise BN (mmaction_multigrid.engine.precise_bn)."""
import logging
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from mmaction_multigrid.engine.precise_bn import update_bn_stats
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
