"""Tests of the config conversion on the stock MMAction2 configs."""
import copy
import os.path as osp
import random

import mmaction
import pytest
import torch
from mmengine import Config
from mmengine.registry import PARAM_SCHEDULERS as ENGINE_SCHEDULERS
from mmengine.registry import RUNNERS
from test_schedule import ref_schedule

import mmaction_multigrid  # noqa: F401  (registers the package)
from mmaction_multigrid import build_plan, convert_config

CONFIGS = osp.join(
    osp.dirname(mmaction.__file__), '.mim', 'configs', 'recognition')
R2 = 0.5**0.5

I3D = 'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py'
SLOWFAST = 'slowfast/slowfast_r50_8xb8-8x8x1-steplr-256e_kinetics400-rgb.py'
SLOWONLY = ('slowonly/slowonly_imagenet-pretrained-r50_8xb16-8x8x1-steplr-'
            '150e_kinetics400-rgb.py')
CSN = ('csn/ircsn_ig65m-pretrained-r152-bnfrozen_8xb12-32x2x1-58e_'
       'kinetics400-rgb.py')
TPN = ('tpn/tpn-slowonly_imagenet-pretrained-r50_8xb8-8x8x1-150e_'
       'kinetics400-rgb.py')
C2D = 'c2d/c2d_r50-in1k-pre_8xb32-8x8x1-100e_kinetics400-rgb.py'
K710 = ('slowonly/slowonly_imagenet-pretrained-r50_32xb8-8x8x1-steplr-150e_'
        'kinetics710-rgb.py')
TSN = 'tsn/tsn_imagenet-pretrained-r50_8xb32-1x1x3-100e_kinetics400-rgb.py'

# path, T, r, B, stock E, warm-up (epochs, start factor) or None
STOCK = [
    (I3D, 32, 2, 8, 100, None),
    (SLOWFAST, 32, 2, 8, 256, (34, 0.1)),
    (SLOWONLY, 8, 8, 16, 150, (10, 0.1)),
    (CSN, 32, 2, 12, 58, (16, 0.1)),
    (TPN, 8, 8, 8, 150, None),
    (C2D, 8, 8, 32, 100, None),
    (K710, 8, 8, 8, 150, (10, 0.1)),
]


def _load(path, **multi_grid):
    cfg = Config.fromfile(osp.join(CONFIGS, path))
    cfg.multi_grid = dict(multi_grid)
    return cfg


def _stock_drops(cfg):
    """Epochs at which MMEngine's stock step scheduler lowers the LR, found
    by running it (the warm-up left out) on a real optimizer."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    steps = [
        dict(s) for s in cfg.param_scheduler
        if s['type'] in ('MultiStepLR', 'StepLR')
    ]
    assert len(steps) == 1
    sched = ENGINE_SCHEDULERS.build(dict(steps[0], optimizer=opt))
    lrs = []
    for _ in range(cfg.train_cfg.max_epochs):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    drops = [e for e in range(1, len(lrs)) if lrs[e] < lrs[e - 1] - 1e-12]
    return drops, steps[0].get('gamma', 0.1)


def _types(items):
    return [i['type'] for i in items]


@pytest.mark.parametrize('path,T,r,B,E,warmup', STOCK)
def test_convert_stock(path, T, r, B, E, warmup):
    cfg = _load(path)
    before = copy.deepcopy(cfg.to_dict())
    out = convert_config(cfg)
    assert cfg.to_dict() == before, 'input config modified'
    assert isinstance(out, Config)

    loader = out.train_dataloader
    assert loader.dataset.type == 'MultiGridDataset'
    assert loader.dataset.dataset == before['train_dataloader']['dataset']
    assert loader.batch_size == B
    assert loader.batch_sampler.type == 'ShortCycleBatchSampler'

    schedulers = out.param_scheduler
    assert isinstance(schedulers, list) and len(schedulers) == 1
    # The stock schedule is kept once; the plan is built from it.
    assert schedulers == [dict(type='MultiGridLR')]
    assert 'schedule' not in loader.batch_sampler
    assert out.multi_grid_stock.max_epochs == E
    schedule = build_plan(out).schedule
    drops, gamma = _stock_drops(Config(before))
    assert schedule.stock_milestones == drops
    assert schedule.gamma == gamma
    assert (schedule.clip_len, schedule.frame_interval) == (T, r)
    assert schedule.size == (224, 224)
    assert schedule.stock_max_epochs == E
    if warmup is None:
        assert schedule.warmup_epochs == 0
    else:
        assert (schedule.warmup_epochs,
                schedule.warmup_start_factor) == pytest.approx(warmup)

    expected = ref_schedule(T, 224, E, drops)['max_epochs']
    assert out.train_cfg.max_epochs == expected
    assert out.train_cfg.type == 'EpochBasedTrainLoop'

    assert _types(out.custom_hooks) == ['MultiGridHook', 'ExactResumeHook']
    assert RUNNERS.get(out.runner_type) is not None

    # Idempotent.
    assert convert_config(out).to_dict() == out.to_dict()


def test_stock_max_epochs_worked_examples():
    assert convert_config(_load(I3D)).train_cfg.max_epochs == 150
    assert convert_config(_load(C2D)).train_cfg.max_epochs == 150
    assert convert_config(_load(SLOWFAST)).train_cfg.max_epochs == 384
    # SlowOnly's MultiStepLR begins at 10: MMEngine drops at 100 and 140.
    schedule = build_plan(convert_config(_load(SLOWONLY))).schedule
    assert schedule.stock_milestones == [100, 140]


def test_dump_reload(tmp_path):
    out = convert_config(_load(SLOWFAST))
    path = str(tmp_path / 'converted.py')
    out.dump(path)
    reloaded = Config.fromfile(path)
    assert reloaded.to_dict() == out.to_dict()
    assert convert_config(reloaded).to_dict() == out.to_dict()


def test_k710_concat():
    out = convert_config(_load(K710))
    inner = out.train_dataloader.dataset.dataset
    assert inner.type == 'ConcatDataset'
    assert _types(inner.datasets) == ['VideoDataset'] * 3


def test_options_kept_and_custom_hooks_kept():
    cfg = _load(
        I3D,
        long_cycle=True,
        short_cycle=False,
        epoch_factor=2.0,
        default_s=(224, 224))
    cfg.custom_hooks = [dict(type='EMAHook')]
    out = convert_config(cfg)
    assert _types(out.custom_hooks)[0] == 'EMAHook'
    assert 'MultiGridHook' in _types(out.custom_hooks)
    schedule = build_plan(out).schedule
    assert schedule.short_cycle is False and schedule.epoch_factor == 2.0
    assert out.multi_grid.short_cycle is False
    expected = ref_schedule(
        32, 224, 100, [40, 80], short_cycle=False,
        epoch_factor=2.0)['max_epochs']
    assert out.train_cfg.max_epochs == expected


def test_short_only_epochs():
    out = convert_config(_load(I3D, long_cycle=False))
    assert out.train_cfg.max_epochs == 150


@pytest.mark.parametrize('multi_grid,key', [
    (dict(foo=1), 'foo'),
    (dict(long_cycle='yes'), 'long_cycle'),
    (dict(short_cycle=1), 'short_cycle'),
    (dict(epoch_factor='1.5'), 'epoch_factor'),
    (dict(short_cycle_factors=0.5), 'short_cycle_factors'),
    (dict(long_cycle_factors=[0.5, 1]), 'long_cycle_factors'),
    (dict(short_cycle_factors=(0, R2)), 'short_cycle_factors'),
    (dict(short_cycle_factors=(0.5, 1.2)), 'short_cycle_factors'),
    (dict(long_cycle_factors=((0, 1), (1, 1))), 'long_cycle_factors'),
    (dict(long_cycle_factors=((1.5, 1), (1, 1))), 'long_cycle_factors'),
    (dict(long_cycle=False, short_cycle=False), 'long_cycle'),
    (dict(default_s=256), 'default_s'),
    (dict(default_s=(224, 320)), 'default_s'),
    (dict(default_s='224'), 'default_s'),
])
def test_option_errors(multi_grid, key):
    with pytest.raises(ValueError, match=key):
        convert_config(_load(I3D, **multi_grid))


@pytest.mark.parametrize('scheduler,reason', [
    (dict(type='ReduceOnPlateauLR', monitor='loss'), 'validation metrics'),
    (dict(type='CosineAnnealingMomentum', T_max=10), 'other than the LR'),
    (dict(type='OneCycleLR', T_max=10), 'MMEngine cannot build'),
])
def test_unsupported_schedulers_rejected(scheduler, reason):
    """Every LR scheduler MMEngine steps without metrics converts
    (tests/test_stock_lr.py); ``ReduceOnPlateauLR``, non-LR schedulers and
    schedulers MMEngine cannot build are refused, naming them."""
    cfg = _load(I3D)
    cfg.param_scheduler = [scheduler]
    with pytest.raises(ValueError, match=reason) as error:
        convert_config(cfg)
    assert scheduler['type'] in str(error.value)


@pytest.mark.parametrize('scheduler', [
    dict(type='OneCycleLR', eta_max=0.1, by_epoch=False),
    dict(type='CosineAnnealingLR', T_max=10, by_epoch=False),
    dict(type='MultiStepLR', milestones=[40, 80], by_epoch=False),
])
def test_iteration_based_schedulers_convert(scheduler):
    """Iteration-based schedulers, refused before, convert and follow
    MMEngine (a step one too: the reference rule is epoch-based)."""
    cfg = _load(I3D)
    cfg.param_scheduler = [scheduler]
    plan = build_plan(convert_config(cfg))
    assert not plan.schedule.step_rule and plan.stock_lr is not None


def test_tsn_rejected():
    # Either check may fire first (NCHW format or 1-frame clips); both
    # explain that a 3D/2D recogniser is the issue.
    with pytest.raises(ValueError, match='[23]D recogniser'):
        convert_config(_load(TSN))


def test_iter_based_rejected():
    cfg = _load(I3D)
    cfg.train_cfg = dict(
        type='IterBasedTrainLoop', max_iters=1000, val_interval=100)
    with pytest.raises(ValueError, match='train_cfg'):
        convert_config(cfg)


def _tutorial_cfg(**dataset_keys):
    cfg = _load(I3D)
    dataset = cfg.train_dataloader.dataset
    dataset.update(dataset_keys)
    for t in dataset.pipeline:
        if t['type'] == 'FormatShape':
            t['input_format'] = 'CTHW'
    return cfg


def test_tutorial_steps_absorbed():
    cfg = _tutorial_cfg(
        short_cycle_factors=[0.5, 0.7071], default_s=(224, 224))
    before = copy.deepcopy(cfg.to_dict())
    out = convert_config(cfg)
    assert cfg.to_dict() == before
    inner = out.train_dataloader.dataset.dataset
    assert 'short_cycle_factors' not in inner and 'default_s' not in inner
    fmt = [t for t in inner.pipeline if t['type'] == 'FormatShape']
    assert [t['input_format'] for t in fmt] == ['NCTHW']
    assert out.train_cfg.max_epochs == 150


@pytest.mark.parametrize('keys,key', [
    (dict(default_s=(256, 256)), 'default_s'),
    (dict(short_cycle_factors=[0.3, 0.6]), 'short_cycle_factors'),
])
def test_tutorial_steps_disagree(keys, key):
    with pytest.raises(ValueError, match=key):
        convert_config(_tutorial_cfg(**keys))


def test_collate_fn_default_replaced_custom_kept():
    cfg = _load(I3D)
    cfg.multi_grid = dict(long_cycle=True, short_cycle=True)
    assert 'collate_fn' not in cfg.train_dataloader
    out = convert_config(cfg)
    assert out.train_dataloader.collate_fn == dict(type='multigrid_collate')
    cfg.train_dataloader.collate_fn = dict(type='pseudo_collate')
    out = convert_config(cfg)
    assert out.train_dataloader.collate_fn == dict(type='multigrid_collate')
    cfg.train_dataloader.collate_fn = dict(type='default_collate')
    out = convert_config(cfg)
    assert out.train_dataloader.collate_fn == dict(type='default_collate')
    assert 'collate_fn' not in out.val_dataloader


# --------------------------------------------------------------------------
# Fail fast: any option set converts to a schedule with non-empty batches,
# or stops at conversion with a ValueError naming the multi_grid key.
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    'multi_grid,key',
    [
        # The two examples: a short-cycle batch of 0 clips (crop
        # round(0.4 * 224) = 90, k = round((90 / (0.707 * 224))**2) =
        # round(0.32) = 0), and a bool where an int is expected.
        (dict(long_cycle_factors=((0.25, 0.4), (1, 1))), 'long_cycle_factors'),
        (dict(precise_bn=dict(num_iters=True)), 'precise_bn'),
        (dict(bn_base_size=True), 'bn_base_size'),
        (dict(default_s=True), 'default_s'),
        (dict(epoch_factor=float('nan')), 'epoch_factor'),
        (dict(epoch_factor=0.001), 'epoch_factor'),
        (dict(long_cycle_factors=((0.5, float('nan')),
                                  (1, 1))), 'long_cycle_factors'),
    ])
def test_bad_options_fail_at_conversion(multi_grid, key):
    with pytest.raises(ValueError, match=f'multi_grid.{key}'):
        convert_config(_load(I3D, **multi_grid))


def _random_value(rng, kind):
    """A value for an option: mostly plausible, sometimes wrong."""
    bad = [
        0, -0.5, 1.5, True, False, None, 'x',
        float('nan'),
        float('inf'), (0.5, ), [], 2
    ]
    if rng.random() < 0.03:
        return rng.choice(bad)
    if kind == 'factor':
        return rng.choice([
            rng.uniform(0, 1),
            rng.uniform(0.5, 1),
            rng.uniform(0.5, 1), 10**rng.uniform(-3, 0), 1, 1, 0.5**0.5,
            0.5**0.5, 0.5, 0.25
        ])
    if kind == 'count':
        return rng.choice([rng.randint(-2, 40), 1, 8])
    if kind == 'epoch_factor':
        return rng.choice(
            [rng.uniform(0, 4), 10**rng.uniform(-3, 0), 1.5, 1.0])
    raise AssertionError(kind)


def _random_options(rng):
    """One generated ``multi_grid`` dict (each key present or not)."""
    options = {}
    if rng.random() < 0.5:
        options['long_cycle'] = rng.choice([True] * 16 + [False] * 2 +
                                           [1, 'yes'])
    if rng.random() < 0.5:
        options['short_cycle'] = rng.choice([True] * 16 + [False] * 3 + [0])
    if rng.random() < 0.8:
        pairs = [
            tuple(
                _random_value(rng, 'factor')
                for _ in range(rng.choice([2] * 80 + [1, 3])))
            for _ in range(rng.randint(1, 5))
        ]
        options['long_cycle_factors'] = pairs if rng.random() < 0.98 else 0.5
    if rng.random() < 0.6:
        options['short_cycle_factors'] = tuple(
            _random_value(rng, 'factor')
            for _ in range(rng.choice([2] * 30 + [1, 3])))
    if rng.random() < 0.4:
        options['epoch_factor'] = _random_value(rng, 'epoch_factor')
    if rng.random() < 0.2:
        options['default_s'] = rng.choice(
            [None, 224, (224, 224), 0, True, (224, ), '224'])
    if rng.random() < 0.3:
        options['bn_base_size'] = rng.choice(
            [None, 'auto', _random_value(rng, 'count'), 2.5])
    if rng.random() < 0.3:
        options['precise_bn'] = rng.choice([
            None, None,
            dict(),
            dict(num_iters=_random_value(rng, 'count')),
            dict(num_iters=_random_value(rng, 'count')),
            dict(num_iters=rng.randint(1, 300)),
            dict(num_iters=True),
            dict(num_iters=2.0),
            dict(iters=5), 10
        ])
    return options


def _shrunk(T, S):
    """The stock I3D config with clips of T frames of S x S pixels."""
    cfg = _load(I3D)
    for t in cfg.train_dataloader.dataset.pipeline:
        if t['type'] == 'SampleFrames':
            t['clip_len'] = T
        elif t['type'] == 'MultiScaleCrop':
            t['input_size'] = S
        elif t['type'] == 'Resize' and t.get('keep_ratio') is False:
            t['scale'] = (S, S)
    return cfg


@pytest.mark.parametrize('T,S,seed', [(32, 224, 0), (8, 16, 1), (4, 8, 2)])
def test_generated_options_convert_or_name_the_key(T, S, seed):
    rng = random.Random(seed)
    stock = _shrunk(T, S)
    outcomes = {'converted': 0, 'refused': 0}
    for _ in range(200):
        options = _random_options(rng)
        cfg = copy.deepcopy(stock)
        cfg.multi_grid = options
        try:
            out = convert_config(cfg)
        except ValueError as error:
            assert 'multi_grid.' in str(error), (options, str(error))
            outcomes['refused'] += 1
            continue
        outcomes['converted'] += 1
        opts = out.multi_grid
        assert opts['bn_base_size'] is None or (type(
            opts['bn_base_size']) is int and opts['bn_base_size'] >= 1)
        if opts['precise_bn'] is not None:
            iters = opts['precise_bn'].get('num_iters', 200)
            assert type(iters) is int and iters >= 1, options
        schedule = build_plan(out).schedule
        assert schedule.max_epochs == out.train_cfg.max_epochs >= 1, options
        for epoch in range(schedule.max_epochs):
            for shape in schedule.batch_shapes(epoch):
                assert shape.batch_size >= 1, (options, epoch)
                assert shape.clip_len >= 1 and shape.frame_interval >= 1
                assert min(shape.size) >= 1, (options, epoch)
    # Both outcomes are well represented.
    assert min(outcomes.values()) >= 25, outcomes


def test_precise_bn_adds_its_hook():
    out = convert_config(_load(I3D, precise_bn=dict(num_iters=5, interval=2)))
    assert out.custom_hooks[-1] == dict(
        type='PreciseBNHook', num_iters=5, interval=2)
    with pytest.raises(ValueError, match='multi_grid.precise_bn'):
        convert_config(_load(I3D, precise_bn=dict(num_iters=5, interval=0)))
