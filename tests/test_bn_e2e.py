"""BatchNorm under multigrid, end to end: sub-batch BN during training,
checkpoints that load into the stock model and evaluate the same with the
stock tools/test.py, and precise BN in the Runner."""
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from conftest import TESTS, TOOLS, toy_config
from mmaction.registry import MODELS
from mmengine.fileio import load
from mmengine.runner import Runner

import mmaction_multigrid  # noqa: F401
from mmaction_multigrid.models.sub_batch_bn import SubBatchNorm3d

I3D = 'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py'


@pytest.fixture(scope='module')
def trained(videos32, tmp_path_factory):
    """One multigrid run with sub-batch BN and precise BN on."""
    work = tmp_path_factory.mktemp('bn_train')
    cfg = toy_config(
        I3D,
        videos32,
        work_dir=str(work),
        batch_size=2,
        max_epochs=3,
        milestones=(2, ),
        multi_grid=dict(precise_bn=dict(num_iters=3)))
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner, work


def test_model_uses_sub_batch_bn_of_stock_batch(trained):
    runner, _ = trained
    bns = [
        m for m in runner.model.modules()
        if isinstance(m, torch.nn.BatchNorm3d)
    ]
    assert bns and all(isinstance(m, SubBatchNorm3d) for m in bns)
    assert {m.base_size for m in bns} == {2}


def test_checkpoint_loads_strict_into_stock_model(trained, videos32):
    runner, work = trained
    stock = toy_config(I3D, videos32)
    model = MODELS.build(stock.model)
    ckpt = torch.load(
        osp.join(work, f'epoch_{runner.max_epochs}.pth'),
        map_location='cpu',
        weights_only=False)
    model.load_state_dict(ckpt['state_dict'], strict=True)
    assert not any(isinstance(m, SubBatchNorm3d) for m in model.modules())
    keys = set(model.state_dict())
    assert keys == set(ckpt['state_dict'])


def test_stock_tools_test_reproduces_last_validation(trained, videos32,
                                                     tmp_path):
    runner, work = trained
    last_val = runner.message_hub.get_scalar('val/acc/top1').current()
    stock = toy_config(I3D, videos32)
    stock.test_dataloader = stock.val_dataloader
    stock.test_evaluator = stock.val_evaluator
    stock.custom_imports = None
    stock.custom_hooks = []
    path = tmp_path / 'stock.py'
    stock.dump(str(path))
    env = dict(
        os.environ, PYTHONPATH=TESTS, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')
    dump = tmp_path / 'scores.pkl'
    proc = subprocess.run([
        sys.executable,
        osp.join(TOOLS, 'test.py'),
        str(path),
        osp.join(work, f'epoch_{runner.max_epochs}.pth'), '--work-dir',
        str(tmp_path / 'test'), '--dump',
        str(dump)
    ],
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'mmaction_multigrid' not in (proc.stdout +
                                        proc.stderr).split('Config:')[0]
    top1 = float(re.findall(r'acc/top1: ([0-9.]+)', proc.stdout)[-1])
    assert top1 == pytest.approx(last_val, abs=1e-4)
    # Every clip's class scores, not only the top-1 over a few clips (which
    # wrong BN statistics could leave unchanged): the stock model on the
    # checkpoint scores each clip as the trained multigrid model does.
    stock_scores = [r['pred_scores']['item'] for r in load(str(dump))]
    runner.model.eval()
    mine = []
    with torch.no_grad():
        for batch in runner.val_dataloader:
            mine += [s.pred_scores.item for s in runner.model.val_step(batch)]
    assert len(mine) == len(stock_scores) > 0
    for i, score in enumerate(mine):
        torch.testing.assert_close(
            torch.as_tensor(stock_scores[i]).float(),
            score.float().cpu(),
            rtol=1e-4,
            atol=1e-5)


def test_precise_bn_recomputes_before_validation(trained):
    runner, work = trained
    log = next(work.glob('*/*.log')).read_text()
    # Validation follows every epoch (val_interval=1).
    for epoch in range(1, runner.max_epochs + 1):
        assert (f'Precise BN after epoch {epoch}: BN statistics recomputed '
                'at the default shape over 3 batches') in log
