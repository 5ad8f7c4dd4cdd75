"""Tests of the config conversion on the stock MMAction2 configs."""
import copy
import os.path as osp

import mmaction
import pytest
import torch
from mmengine import Config
from mmengine.registry import PARAM_SCHEDULERS as ENGINE_SCHEDULERS
from mmengine.registry import RUNNERS

import mmaction_multigrid  # noqa: F401  (registers the package)
from mmaction_multigrid import convert_config
from test_schedule import ref_schedule

CONFIGS = osp.join(osp.dirname(mmaction.__file__), '.mim', 'configs',
                   'recognition')
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
    steps = [dict(s) for s in cfg.param_scheduler
             if s['type'] in ('MultiStepLR', 'StepLR')]
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
    assert schedulers[0].type == 'MultiGridLR'
    args = schedulers[0].schedule
    drops, gamma = _stock_drops(Config(before))
    assert list(args['milestones']) == drops
    assert args['gamma'] == gamma
    assert (args['clip_len'], args['frame_interval']) == (T, r)
    assert list(args['size']) == [224, 224]
    assert args['max_epochs'] == E
    if warmup is None:
        assert args.get('warmup_epochs', 0) == 0
    else:
        assert (args['warmup_epochs'],
                args['warmup_start_factor']) == pytest.approx(warmup)
    assert dict(loader.batch_sampler.schedule) == dict(args)

    expected = ref_schedule(T, 224, E, drops)['max_epochs']
    assert out.train_cfg.max_epochs == expected
    assert out.train_cfg.type == 'EpochBasedTrainLoop'

    assert 'MultiGridHook' in _types(out.custom_hooks)
    assert RUNNERS.get(out.runner_type) is not None

    # Idempotent.
    assert convert_config(out).to_dict() == out.to_dict()


def test_stock_max_epochs_worked_examples():
    assert convert_config(_load(I3D)).train_cfg.max_epochs == 150
    assert convert_config(_load(C2D)).train_cfg.max_epochs == 150
    assert convert_config(_load(SLOWFAST)).train_cfg.max_epochs == 384
    # SlowOnly's MultiStepLR begins at 10: MMEngine drops at 100 and 140.
    args = convert_config(_load(SLOWONLY)).param_scheduler[0].schedule
    assert list(args['milestones']) == [100, 140]


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
    cfg = _load(I3D, long_cycle=True, short_cycle=False, epoch_factor=2.0,
                default_s=(224, 224))
    cfg.custom_hooks = [dict(type='EMAHook')]
    out = convert_config(cfg)
    assert _types(out.custom_hooks)[0] == 'EMAHook'
    assert 'MultiGridHook' in _types(out.custom_hooks)
    args = out.param_scheduler[0].schedule
    assert args['short_cycle'] is False and args['epoch_factor'] == 2.0
    expected = ref_schedule(32, 224, 100, [40, 80], short_cycle=False,
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
    (dict(type='OneCycleLR', eta_max=0.1, total_steps=100), 'no multigrid'),
    (dict(type='CosineAnnealingLR', T_max=10, by_epoch=False), 'by_epoch'),
    (dict(type='CosineAnnealingMomentum', T_max=10), 'other than the LR'),
])
def test_unsupported_schedulers_rejected(scheduler, reason):
    """Cosine schedules convert (tests/test_cosine.py); schedulers without
    a closed form, iteration-based ones and non-LR ones are refused."""
    cfg = _load(I3D)
    cfg.param_scheduler = [scheduler]
    with pytest.raises(ValueError, match=f'param_scheduler.*{reason}'):
        convert_config(cfg)


def test_tsn_rejected():
    # Either check may fire first (NCHW format or 1-frame clips); both
    # explain that a 3D/2D recogniser is the issue.
    with pytest.raises(ValueError, match='[23]D recogniser'):
        convert_config(_load(TSN))


def test_iter_based_rejected():
    cfg = _load(I3D)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1000,
                         val_interval=100)
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
    cfg = _tutorial_cfg(short_cycle_factors=[0.5, 0.7071],
                        default_s=(224, 224))
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
