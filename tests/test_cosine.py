"""Non-step LR schedules (cosine and others) under multigrid, in the
stock configs' forms.

The stock LR comes from MMEngine's own schedulers (``mmengine_lr``); the
multigrid rules (docs/schedules.md) from the independent transcription in
``tests/reference.py``.
"""
import math
import os.path as osp

import pytest
import reference as ref
from conftest import STOCK
from mmengine import Config
from mmengine_lr import stock_lrs

from mmaction_multigrid import MultiGridSchedule, build_plan, convert_config
from mmaction_multigrid.engine.plan import plan_for_samples

R2 = 0.5**0.5
LONG = ((0.25, R2), (0.5, R2), (0.5, 1), (1, 1))
SHORT = (0.5, R2)
I3D = 'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py'
SLOWFAST = 'slowfast/slowfast_r50_8xb8-8x8x1-256e_kinetics400-rgb.py'
SWIN = ('swin/swin-tiny-p244-w877_in1k-pre_8xb8-amp-32x2x1-30e_'
        'kinetics400-rgb.py')
MVIT = 'mvit/mvit-base-p244_u32_sthv2-rgb.py'
R2PLUS1D = 'r2plus1d/r2plus1d_r34_8xb8-8x8x1-180e_kinetics400-rgb.py'
SLOWONLY = 'slowonly/slowonly_r50_8xb16-8x8x1-256e_kinetics400-rgb.py'
UNIFORMERV2 = ('uniformerv2/uniformerv2-base-p16-res224_clip_8xb32-u8_'
               'kinetics400-rgb.py')

# The stock schedules' forms, shrunk to 20 epochs.
FORMS = {
    'slowfast': [  # overlapping warm-up, per-epoch cosine to 0
        dict(
            type='LinearLR',
            start_factor=0.1,
            by_epoch=True,
            begin=0,
            end=3,
            convert_to_iter_based=True),
        dict(
            type='CosineAnnealingLR',
            T_max=20,
            eta_min=0,
            by_epoch=True,
            begin=0,
            end=20)
    ],
    'swin': [  # fractional warm-up end
        dict(
            type='LinearLR',
            start_factor=0.1,
            by_epoch=True,
            begin=0,
            end=2.5,
            convert_to_iter_based=True),
        dict(
            type='CosineAnnealingLR',
            T_max=20,
            eta_min=0,
            by_epoch=True,
            begin=0,
            end=20)
    ],
    'mvit': [  # warm-up, then a per-iteration cosine to eta_min > 0
        dict(
            type='LinearLR',
            start_factor=0.01,
            by_epoch=True,
            begin=0,
            end=3,
            convert_to_iter_based=True),
        dict(
            type='CosineAnnealingLR',
            T_max=20,
            eta_min=1.6e-5,
            by_epoch=True,
            begin=3,
            end=20,
            convert_to_iter_based=True)
    ],
    'r2plus1d': [  # no begin/end
        dict(type='CosineAnnealingLR', T_max=20, eta_min=0, by_epoch=True)
    ],
    'uniformerv2': [  # eta_min_ratio, no T_max
        dict(
            type='LinearLR',
            start_factor=0.1,
            by_epoch=True,
            begin=0,
            end=2,
            convert_to_iter_based=True),
        dict(
            type='CosineAnnealingLR',
            eta_min_ratio=0.1,
            by_epoch=True,
            begin=2,
            end=20,
            convert_to_iter_based=True)
    ],
}

IPE = 9  # stock iterations per epoch
BASE_LR = 1e-3


def _plan(form, **multi_grid):
    """The plan of the stock SlowFast config with the schedule ``form``
    over 20 epochs, at ``IPE`` stock iterations per epoch."""
    cfg = _load(SLOWFAST, **multi_grid)
    cfg.train_cfg.max_epochs = 20
    cfg.param_scheduler = FORMS[form]
    cfg.optim_wrapper.optimizer.lr = BASE_LR
    return plan_for_samples(build_plan(cfg), 8 * IPE)


def _stock_at(form):
    """The stock LR factor at a fractional stock epoch, from MMEngine."""
    lrs = stock_lrs(FORMS[form], 20, IPE, BASE_LR)
    return lambda e: lrs[min(math.floor(e * IPE + 1e-9), len(lrs) - 1)]


@pytest.mark.parametrize('form', sorted(FORMS))
def test_short_cycle_only_stretches_the_stock_schedule(form):
    plan = _plan(form, long_cycle=False)
    schedule = plan.schedule
    stock = _stock_at(form)
    assert schedule.max_epochs == 30
    assert [(s.shape.batch, s.shape.frames, s.end_epoch)
            for s in schedule.stages] == [(1, 32, 30)]
    for e in [i / 7 for i in range(30 * 7)]:
        assert plan.epoch_lr_factor(e) == pytest.approx(
            stock(e / 1.5), rel=1e-9), e


@pytest.mark.parametrize('form', ['slowfast', 'mvit'])
@pytest.mark.parametrize('cycles,share', [(1, 0.2), (2, 0.2), (3, 0.1)])
@pytest.mark.parametrize('scaling', ['linear', 'sqrt', 'none'])
def test_long_cycle_rule(form, cycles, share, scaling):
    plan = _plan(
        form,
        num_long_cycles=cycles,
        fine_tune_share=share,
        lr_scaling=scaling)
    schedule = plan.schedule
    phases = ref.cosine_phases(20, cycles, share)
    want = ref.long_cycle(32, (224, 224), 20, phases, LONG, SHORT, True, 1.5)
    assert [(s.lr_stage, (s.shape.batch, s.shape.frames, s.shape.size),
             s.end_epoch) for s in schedule.stages] == want
    stock = _stock_at(form)
    for e in [i / 9 for i in range(want[-1][2] * 9)]:
        assert plan.epoch_lr_factor(e) == pytest.approx(
            ref.cosine_lr_factor(e, want, stock, 20, phases, scaling),
            rel=1e-9), e


def test_long_cycle_lr_ends_with_the_stock_schedule():
    """The fine-tuning runs the stock schedule's tail at the default shape:
    the last iteration's LR is the stock run's last LR."""
    plan = _plan('mvit')
    end = plan.schedule.max_epochs
    assert plan.schedule.base_shape(end - 1).batch == 1
    assert plan.epoch_lr_factor(end -
                                1e-9) == pytest.approx(_stock_at('mvit')(20))
    assert plan.schedule.equivalent_stock_epoch(0) == 0


def _load(path, **multi_grid):
    cfg = Config.fromfile(osp.join(STOCK, path))
    cfg.multi_grid = dict(multi_grid)
    return cfg


@pytest.mark.parametrize('path,T,E', [(SLOWFAST, 32, 256), (SWIN, 32, 30),
                                      (MVIT, 32, 100), (R2PLUS1D, 8, 180),
                                      (SLOWONLY, 8, 256),
                                      (UNIFORMERV2, 8, 55)])
def test_stock_cosine_configs_convert(path, T, E):
    cfg = _load(path)
    out = convert_config(cfg)
    assert out.param_scheduler == [dict(type='MultiGridLR')]
    assert not build_plan(out).schedule.step_rule
    assert out.multi_grid_stock.max_epochs == E
    assert [s['type'] for s in out.multi_grid_stock.param_scheduler
            ] == [s['type'] for s in cfg.param_scheduler]
    want = ref.long_cycle(T, (224, 224), E, ref.cosine_phases(E, 2, 0.2), LONG,
                          SHORT, True, 1.5)
    assert out.train_cfg.max_epochs == want[-1][2] == round(1.5 * E)
    short = convert_config(_load(path, long_cycle=False))
    assert short.train_cfg.max_epochs == int(1.5 * E)


@pytest.mark.parametrize('options,key', [
    (dict(lr_scaling='quadratic'), 'lr_scaling'),
    (dict(num_long_cycles=0), 'num_long_cycles'),
    (dict(num_long_cycles=1.5), 'num_long_cycles'),
    (dict(fine_tune_share=1.0), 'fine_tune_share'),
    (dict(short_cycle_lr='linear'), 'short_cycle_lr'),
    (dict(short_cycle_lr=True), 'short_cycle_lr'),
])
def test_new_option_errors(options, key):
    with pytest.raises(ValueError, match=f'multi_grid.{key}'):
        convert_config(_load(SLOWFAST, **options))


def test_lr_scaling_on_a_step_schedule():
    """``lr_scaling`` replaces the batch factor of the reference step rule
    and nothing else."""
    stages = ref.long_cycle(32, (224, 224), 100, [40, 80], LONG, SHORT, True,
                            1.5)
    schedules = {
        scaling:
        MultiGridSchedule(
            32, 2, 224, 100, [40, 80], batch_size=8, lr_scaling=scaling)
        for scaling in ('linear', 'sqrt', 'none')
    }
    for e in [i / 3 for i in range(150 * 3)]:
        want = ref.lr_factor(e, stages, 0.1, 2, True)  # linear: gamma**s * b
        b = ref.base_at(stages, int(e))[1][0]
        got = {k: s.lr_factor(e) for k, s in schedules.items()}
        assert got['linear'] == pytest.approx(want)
        assert got['sqrt'] == pytest.approx(want / b * b**0.5)
        assert got['none'] == pytest.approx(want / b)


def test_step_schedules_follow_the_reference_rule():
    """A step config keeps the reference step rule: no stock LR record."""
    plan = build_plan(convert_config(_load(I3D)))
    assert plan.schedule.step_rule and plan.stock_lr is None
    assert plan.schedule.stock_milestones == [40, 80]


@pytest.mark.parametrize('path,options,want', [
    (SLOWFAST, {}, 'scaled'),
    (SLOWFAST, dict(long_cycle=False), 'scaled'),
    (SLOWFAST, dict(short_cycle_lr='constant'), 'constant'),
    (I3D, {}, 'constant'),
    (I3D, dict(short_cycle_lr='scaled'), 'scaled'),
])
def test_short_cycle_lr_default(path, options, want):
    """Non-step schedules scale the short cycle's batches by default; step
    schedules keep the reference (one LR per epoch's base shape)."""
    out = convert_config(_load(path, **options))
    assert build_plan(out).schedule.short_cycle_lr == want
    assert out.multi_grid.short_cycle_lr == want


@pytest.mark.parametrize('scaling', ['linear', 'sqrt', 'none'])
@pytest.mark.parametrize('long_cycle', [True, False])
def test_scaled_short_cycle_batches(scaling, long_cycle):
    """With ``short_cycle_lr='scaled'`` batch ``i`` of an epoch trains at
    the epoch's LR times its size over the base shape's, by ``lr_scaling``;
    with 'constant' every batch trains at the epoch's LR."""
    scaled = _plan(
        'slowfast',
        long_cycle=long_cycle,
        lr_scaling=scaling,
        short_cycle_lr='scaled').schedule
    constant = _plan(
        'slowfast',
        long_cycle=long_cycle,
        lr_scaling=scaling,
        short_cycle_lr='constant').schedule
    seen = set()
    for epoch in range(scaled.max_epochs):
        sizes = [s.batch_size for s in scaled.batch_shapes(epoch)]
        for i in range(7):
            want = ref.short_cycle_lr_factor(sizes, i, scaling)
            assert scaled.batch_lr_factor(epoch, i) == pytest.approx(want)
            assert constant.batch_lr_factor(epoch, i) == 1
            seen.add(round(want, 6))
    assert len(seen) == (1 if scaling == 'none' else 3)
