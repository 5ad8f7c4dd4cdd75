"""Non-step LR schedules follow MMEngine's own schedulers, iteration by
iteration (issue: exact for every MMEngine LR scheduler).

The oracle is ``mmengine_lr.stock_lrs``: the stock ``param_scheduler`` built
by MMEngine's Runner code and stepped by MMEngine's ``ParamSchedulerHook``.
The multigrid rule on top of it is the documented one (docs/schedules.md):
multigrid iteration ``i`` of epoch ``e`` (``n`` iterations) trains at the
stock LR of the equivalent stock iteration, times its batch size over the
stock batch size (linear scaling, short-cycle batches scaled). The
equivalent stock epoch is ``(e + i / n) / epoch_factor`` with short cycles
only; with long cycles, each long-cycle phase's multigrid epochs map
linearly onto the phase's stock epochs (phases: ``num_long_cycles`` equal
parts of the first ``1 - fine_tune_share`` of the run, then fine-tuning).
Both are computed here with exact fractions.
"""
import math
import os.path as osp
from fractions import Fraction

import pytest
import torch
from conftest import STOCK
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine_lr import stock_lrs

from mmaction_multigrid import MultiGridLR, build_plan
from mmaction_multigrid.engine.plan import plan_for_samples

I3D = osp.join(
    STOCK, 'i3d',
    'i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py')
E = 10  # stock epochs
B = 8  # stock clips per GPU (the I3D config's)
IPE = 20  # stock iterations per epoch
BASE_LR = 0.01

SCHEDULES = {
    'PolyLR': [dict(type='PolyLR', power=0.9, eta_min=0, by_epoch=True)],
    'ConstantLR': [dict(type='ConstantLR', factor=0.5, begin=0, end=5)],
    'ExponentialLR then PolyLR': [
        dict(type='ExponentialLR', gamma=0.8, begin=0, end=4),
        dict(type='PolyLR', power=0.9, begin=4, end=E)
    ],
    'LinearLR warm-up (epochs) + CosineAnnealingLR': [
        dict(type='LinearLR', start_factor=0.1, begin=0, end=3),
        dict(type='CosineAnnealingLR', T_max=E, eta_min=0, begin=0, end=E)
    ],
    'LinearLR warm-up (iterations) + CosineAnnealingLR': [
        dict(
            type='LinearLR',
            start_factor=0.1,
            begin=0,
            end=1,
            convert_to_iter_based=True),
        dict(type='CosineAnnealingLR', T_max=E, eta_min=0, begin=0, end=E)
    ],
    'OneCycleLR': [
        dict(
            type='OneCycleLR',
            eta_max=0.05,
            total_steps=E * IPE,
            by_epoch=False,
            begin=0,
            end=E * IPE)
    ],
    'CosineRestartLR': [
        dict(
            type='CosineRestartLR',
            periods=[4, 6],
            restart_weights=[1, 0.5],
            eta_min=0,
            begin=0,
            end=E)
    ],
    'CosineAnnealingLR by iteration': [
        dict(
            type='CosineAnnealingLR',
            T_max=E * IPE,
            by_epoch=False,
            begin=0,
            end=E * IPE)
    ],
    'overlapping LinearLR and ExponentialLR': [
        dict(type='LinearLR', start_factor=0.25, begin=0, end=3),
        dict(type='ExponentialLR', gamma=0.9, begin=1, end=E)
    ],
    'MultiStepLR by iteration': [
        dict(
            type='MultiStepLR',
            milestones=[4 * IPE, 8 * IPE],
            by_epoch=False,
            begin=0,
            end=E * IPE)
    ],
}
MODES = {
    'long and short cycles': {},
    'long cycle only': dict(short_cycle=False),
    'short cycle only': dict(long_cycle=False),
}


def _config(schedulers, **multi_grid):
    cfg = Config.fromfile(I3D)
    cfg.train_cfg.max_epochs = E
    cfg.param_scheduler = schedulers
    cfg.optim_wrapper.optimizer.lr = BASE_LR
    cfg.multi_grid = multi_grid
    return cfg


def _multigrid_lrs(plan):
    """LR of every iteration of the plan, from ``MultiGridLR`` stepped as
    ``ParamSchedulerHook`` steps it."""
    model = torch.nn.Linear(1, 1)
    optim = OptimWrapper(
        torch.optim.SGD(model.parameters(), lr=BASE_LR, momentum=0.9))
    scheduler = MultiGridLR(optim, plan=plan)
    lrs = []
    for _ in range(sum(plan.epoch_lengths)):
        lrs.append(optim.param_groups[0]['lr'])
        optim.step()
        scheduler.step()
    return lrs


def _stock_epoch(plan, epoch, fraction, long_cycle):
    """The equivalent stock epoch of multigrid ``epoch + fraction`` by the
    documented rule, exactly."""
    if not long_cycle:
        return (epoch + fraction) / Fraction(3, 2)
    # Long-cycle phases: 2 equal phases over the first 80% of the run.
    bounds = [Fraction(0), Fraction(E * 4, 10), Fraction(E * 8, 10), E]
    rows = plan.schedule.describe()
    stage = next(r for r in rows if r['begin'] <= epoch < r['end'])['lr_stage']
    spans = [r for r in rows if r['lr_stage'] == stage]
    begin, end = spans[0]['begin'], spans[-1]['end']
    part = (epoch + fraction - begin) / (end - begin)
    return bounds[stage] + part * (bounds[stage + 1] - bounds[stage])


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('name', SCHEDULES)
def test_every_iteration_follows_mmengine(name, mode):
    options = MODES[mode]
    plan = plan_for_samples(
        build_plan(_config(SCHEDULES[name], **options)), B * IPE)
    stock = stock_lrs(SCHEDULES[name], E, IPE, BASE_LR)
    got = _multigrid_lrs(plan)
    long_cycle = options.get('long_cycle', True)
    k = 0
    for epoch, n in enumerate(plan.epoch_lengths):
        shapes = plan.schedule.batch_shapes(epoch)
        for i in range(n):
            stock_epoch = _stock_epoch(plan, epoch, Fraction(i, n), long_cycle)
            at = min(math.floor(stock_epoch * IPE), E * IPE - 1)
            batch = shapes[i % len(shapes)].batch_size
            want = BASE_LR * stock[at] * batch / B
            assert got[k] == pytest.approx(
                want, rel=1e-9, abs=1e-15), (epoch, i, got[k], want)
            k += 1


@pytest.mark.parametrize('name', SCHEDULES)
def test_stock_lr_is_mmengine_s(name):
    """The plan's record of the stock LR is MMEngine's at every stock
    iteration."""
    plan = plan_for_samples(
        build_plan(_config(SCHEDULES[name], long_cycle=False)), B * IPE)
    stock = stock_lrs(SCHEDULES[name], E, IPE, BASE_LR)
    assert [plan.stock_lr.at_iter(i) for i in range(E * IPE)] == (
        pytest.approx(stock, rel=1e-12, abs=1e-15))


@pytest.mark.parametrize('schedulers,match', [
    ([dict(type='ReduceOnPlateauLR', monitor='loss')], 'ReduceOnPlateauLR'),
    ([dict(type='CosineAnnealingMomentum', T_max=E)], 'other than the LR'),
    ([], 'param_scheduler is empty'),
])
def test_refused_schedules_say_why(schedulers, match):
    with pytest.raises(ValueError, match=match):
        build_plan(_config(schedulers))
