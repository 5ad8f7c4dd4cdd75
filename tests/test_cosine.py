"""Non-step LR schedules (cosine and others) under multigrid.

The stock factor is checked against MMEngine's own schedulers run step by
step; the multigrid rules (docs/schedules.md) against the independent
transcription in ``tests/reference.py``.
"""
import os.path as osp

import pytest
import reference as ref
import torch
from conftest import STOCK
from mmengine import Config
from mmengine.registry import PARAM_SCHEDULERS as ENGINE_SCHEDULERS

import mmaction_multigrid  # noqa: F401  (registers the package)
from mmaction_multigrid import convert_config
from mmaction_multigrid.schedule.cycles import MultiGridSchedule
from mmaction_multigrid.schedule.lr_rules import scheduler_terms, stock_factor

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


def _mmengine_lrs(schedulers, epochs, epoch_length, base_lr):
    """LR of every iteration as MMEngine's Runner applies ``schedulers``:
    iteration-based ones step after every iteration, the others after every
    epoch."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base_lr)
    built = []
    for cfg in schedulers:
        cfg = dict(cfg)
        cfg.setdefault('end', epochs)
        if cfg.pop('convert_to_iter_based', False):
            cls = ENGINE_SCHEDULERS.get(cfg.pop('type'))
            built.append(
                cls.build_iter_from_epoch(
                    opt, epoch_length=epoch_length, **cfg))
        else:
            built.append(ENGINE_SCHEDULERS.build(dict(cfg, optimizer=opt)))
    lrs = []
    for _ in range(epochs):
        for _ in range(epoch_length):
            lrs.append(opt.param_groups[0]['lr'])
            opt.step()
            for s in built:
                if not s.by_epoch:
                    s.step()
        for s in built:
            if s.by_epoch:
                s.step()
    return lrs


@pytest.mark.parametrize('form', sorted(FORMS))
def test_stock_factor_is_mmengine_schedule(form):
    """The closed forms reproduce MMEngine's chained schedulers; a LinearLR
    warm-up differs by its discrete end (MMEngine reaches end_factor one
    step before ``end``): at most (1 - start) / steps."""
    base_lr, length = 1e-3, 50
    terms = scheduler_terms(FORMS[form], 20, base_lr)
    got = [
        base_lr * stock_factor(terms, i / length) for i in range(20 * length)
    ]
    want = _mmengine_lrs(FORMS[form], 20, length, base_lr)
    warm = {s['end'] * length for s in FORMS[form] if s['type'] == 'LinearLR'}
    tolerance = 1.0 / (min(warm) - 1) if warm else 1e-9
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == pytest.approx(w, rel=tolerance, abs=1e-12), (i, g, w)


def _schedule(form, **kw):
    return MultiGridSchedule(
        32,
        2,
        224,
        20, [],
        batch_size=8,
        lr_terms=scheduler_terms(FORMS[form], 20, 1e-3),
        **kw)


@pytest.mark.parametrize('form', sorted(FORMS))
def test_short_cycle_only_stretches_the_stock_schedule(form):
    schedule = _schedule(form, long_cycle=False)
    stretched = ref.stretched(
        [dict(s, end=s.get('end', 20)) for s in FORMS[form]], 1.5)
    assert schedule.max_epochs == 30
    assert [(s.shape.batch, s.shape.frames, s.end_epoch)
            for s in schedule.stages] == [(1, 32, 30)]
    for e in [i / 7 for i in range(30 * 7)]:
        assert schedule.lr_factor(e) == pytest.approx(
            ref.stock_lr_factor(e, stretched, 1e-3), rel=1e-9), e


@pytest.mark.parametrize('form', ['slowfast', 'mvit'])
@pytest.mark.parametrize('cycles,share', [(1, 0.2), (2, 0.2), (3, 0.1)])
@pytest.mark.parametrize('scaling', ['linear', 'sqrt', 'none'])
def test_long_cycle_rule(form, cycles, share, scaling):
    schedule = _schedule(
        form,
        num_long_cycles=cycles,
        fine_tune_share=share,
        lr_scaling=scaling)
    phases = ref.cosine_phases(20, cycles, share)
    want = ref.long_cycle(32, (224, 224), 20, phases, LONG, SHORT, True, 1.5)
    assert [(s.lr_stage, (s.shape.batch, s.shape.frames, s.shape.size),
             s.end_epoch) for s in schedule.stages] == want
    schedulers = [dict(s, end=s.get('end', 20)) for s in FORMS[form]]
    for e in [i / 9 for i in range(want[-1][2] * 9)]:
        assert schedule.lr_factor(e) == pytest.approx(
            ref.cosine_lr_factor(e, want, schedulers, 1e-3, 20, phases,
                                 scaling),
            rel=1e-9), e


def test_long_cycle_lr_ends_with_the_stock_schedule():
    """The fine-tuning runs the stock schedule's tail at the default shape:
    the last iteration's LR is the stock run's last LR."""
    schedule = _schedule('mvit')
    end = schedule.max_epochs
    assert schedule.base_shape(end - 1).batch == 1
    assert schedule.lr_factor(end - 1e-9) == pytest.approx(
        ref.stock_lr_factor(20, FORMS['mvit'], 1e-3, smooth=True))
    assert schedule.equivalent_stock_epoch(0) == 0


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
    schedule = out.train_dataloader.batch_sampler.schedule
    assert out.param_scheduler == [dict(type='MultiGridLR')]
    assert schedule['milestones'] == []
    assert [t['type'] for t in schedule['lr_terms']
            ] == [s['type'] for s in cfg.param_scheduler]
    want = ref.long_cycle(T, (224, 224), E, ref.cosine_phases(E, 2, 0.2), LONG,
                          SHORT, True, 1.5)
    assert out.train_cfg.max_epochs == want[-1][2] == round(1.5 * E)
    short = convert_config(_load(path, long_cycle=False))
    assert short.train_cfg.max_epochs == int(1.5 * E)


def test_eta_min_becomes_a_ratio_of_the_base_lr():
    cfg = _load(MVIT)
    terms = convert_config(
        cfg).train_dataloader.batch_sampler.schedule['lr_terms']
    lr = cfg.optim_wrapper.optimizer.lr
    assert terms[1]['eta_min_ratio'] == pytest.approx(1.6e-5 / lr)
    assert terms[1]['T_max'] == 70 and terms[1]['per_iter']
    assert terms[0]['end'] == 30


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
    linear = MultiGridSchedule(32, 2, 224, 100, [40, 80], batch_size=8)
    none = MultiGridSchedule(
        32, 2, 224, 100, [40, 80], batch_size=8, lr_scaling='none')
    for e in [i / 3 for i in range(150 * 3)]:
        b = linear.base_shape(int(e)).batch
        assert none.lr_factor(e) == pytest.approx(linear.lr_factor(e) / b)
    assert 'lr_scaling' not in linear.args and none.args['lr_scaling'] == (
        'none')


def test_step_schedule_args_unchanged():
    """Step configs keep their schedule settings (and so resume from their
    old checkpoints without a settings warning)."""
    out = convert_config(_load(I3D))
    assert not {
        'lr_terms', 'num_long_cycles', 'fine_tune_share', 'lr_scaling',
        'short_cycle_lr'
    } & set(out.train_dataloader.batch_sampler.schedule)


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
    sampler = out.train_dataloader.batch_sampler
    schedule = MultiGridSchedule(batch_size=8, **sampler.schedule)
    assert schedule.short_cycle_lr == want


@pytest.mark.parametrize('scaling', ['linear', 'sqrt', 'none'])
@pytest.mark.parametrize('long_cycle', [True, False])
def test_scaled_short_cycle_batches(scaling, long_cycle):
    """With ``short_cycle_lr='scaled'`` batch ``i`` of an epoch trains at
    the epoch's LR times its size over the base shape's, by ``lr_scaling``;
    with 'constant' every batch trains at the epoch's LR."""
    scaled = _schedule(
        'slowfast',
        long_cycle=long_cycle,
        lr_scaling=scaling,
        short_cycle_lr='scaled')
    constant = _schedule('slowfast', long_cycle=long_cycle, lr_scaling=scaling)
    seen = set()
    for epoch in range(scaled.max_epochs):
        sizes = [s.batch_size for s in scaled.batch_shapes(epoch)]
        for i in range(7):
            want = ref.short_cycle_lr_factor(sizes, i, scaling)
            assert scaled.batch_lr_factor(epoch, i) == pytest.approx(want)
            assert constant.batch_lr_factor(epoch, i) == 1
            seen.add(round(want, 6))
    assert len(seen) == (1 if scaling == 'none' else 3)
