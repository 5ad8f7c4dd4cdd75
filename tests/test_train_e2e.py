"""End-to-end: stock MMAction2 configs plus the two lines train through the
real Runner on generated videos/rawframes, and what the model receives (clip
shape, batch size, LR, epochs) matches the reference semantics."""
import json
import os.path as osp

import pytest
import reference as ref
from conftest import toy_config, train_with_tools
from mmengine.runner import Runner

import mmaction_multigrid  # noqa: F401  (installs the switch)

I3D = 'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py'


def recorded(work_dir):
    with open(osp.join(work_dir, 'inputs.json')) as f:
        return [(r['epoch'], r['iter'], r['shape'], r['lr'])
                for r in json.load(f)]


def assert_matches(got, want):
    assert [g[:3] for g in got] == [w[:3] for w in want]
    for g, w in zip(got, want):
        assert g[3] == pytest.approx(w[3], rel=1e-6), (g, w)


def train(cfg):
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


STOCK_CASES = [
    pytest.param(I3D, dict(clip_len=32), id='i3d'),
    pytest.param(
        'slowfast/slowfast_r50_8xb8-8x8x1-steplr-256e_kinetics400-rgb.py',
        dict(clip_len=32, warmup=1),
        id='slowfast-steplr-warmup'),
    pytest.param(
        'slowonly/slowonly_imagenet-pretrained-r50_8xb16-8x8x1-steplr-150e_'
        'kinetics400-rgb.py',
        dict(clip_len=8, interval=4, warmup=1),
        id='slowonly-steplr'),
    pytest.param(
        'csn/ircsn_ig65m-pretrained-r50-bnfrozen_8xb12-32x2x1-58e_'
        'kinetics400-rgb.py',
        dict(clip_len=32),
        id='csn'),
    # TPN's auxiliary head has BN on 1x1x1 features: it needs 2+ clips per
    # BN group, like the stock config does at batch size 1.
    pytest.param(
        'tpn/tpn-slowonly_imagenet-pretrained-r50_8xb8-8x8x1-150e_'
        'kinetics400-rgb.py',
        dict(clip_len=8, interval=4, batch_size=2),
        id='tpn'),
    pytest.param(
        'c2d/c2d_r50-in1k-pre_8xb32-8x8x1-100e_kinetics400-rgb.py',
        dict(clip_len=8, interval=4),
        id='c2d'),
]


@pytest.mark.parametrize('stock,kw', STOCK_CASES)
def test_stock_config_follows_reference(stock, kw, request, tmp_path):
    batch = kw.get('batch_size', 1)
    data = request.getfixturevalue('videos32' if batch > 1 else 'videos')
    cfg = toy_config(stock, data, work_dir=str(tmp_path), multi_grid={}, **kw)
    runner = train(cfg)
    want = ref.expected_run(
        16 * batch,
        kw['clip_len'],
        32,
        batch,
        4, [2, 3],
        0.001,
        warmup=kw.get('warmup', 0))
    assert_matches(recorded(tmp_path), want)
    assert runner.max_epochs == want[-1][0] + 1 == runner.epoch
    assert runner.iter == runner.max_iters == len(want)


@pytest.mark.parametrize('long_cycle,short_cycle,data', [
    (True, False, 'videos'),
    (False, True, 'rawframes'),
    (True, True, 'rawframes'),
])
def test_modes_and_rawframes(long_cycle, short_cycle, data, request, tmp_path):
    cfg = toy_config(
        I3D,
        request.getfixturevalue(data),
        work_dir=str(tmp_path),
        max_epochs=4,
        multi_grid=dict(long_cycle=long_cycle, short_cycle=short_cycle))
    train(cfg)
    want = ref.expected_run(
        16,
        32,
        32,
        1,
        4, [2, 3],
        0.001,
        long_on=long_cycle,
        short_on=short_cycle)
    assert_matches(recorded(tmp_path), want)


def test_config_without_multi_grid_trains_as_stock(videos, tmp_path):
    cfg = toy_config(I3D, videos, work_dir=str(tmp_path), batch_size=2)
    runner = train(cfg)
    got = recorded(tmp_path)
    assert type(runner) is Runner
    assert runner.max_epochs == 4
    assert {tuple(g[2]) for g in got} == {(2, 3, 32, 32, 32)}
    assert len(got) == 4 * 8
    assert [g[3] for g in got] == pytest.approx(
        [0.001 * 0.1**((g[0] >= 2) + (g[0] >= 3)) for g in got])


def test_tools_train_uses_converted_config(videos, tmp_path):
    """`python tools/train.py CONFIG`, unchanged, as a user runs it."""
    cfg = toy_config(
        I3D,
        videos,
        multi_grid=dict(short_cycle=False),
        max_epochs=3,
        milestones=(2, ))
    work = train_with_tools(
        cfg, tmp_path, name='i3d_multigrid.py', timeout=600)
    want = ref.expected_run(16, 32, 32, 1, 3, [2], 0.001, short_on=False)
    assert_matches(recorded(work), want)
    dumped = (work / 'i3d_multigrid.py').read_text()
    assert "type='MultiGridDataset'" in dumped
    assert "type='MultiGridLR'" in dumped
    log = next(work.glob('*/*.log')).read_text()
    assert 'Multigrid schedule' in log and 'frames:' in log


@pytest.mark.parametrize('stock,kw,message', [
    ('c3d/c3d_sports1m-pretrained_8xb30-16x1x1-45e_ucf101-rgb.py',
     dict(clip_len=16, size=112, short_side=128), 'C3D'),
    ('timesformer/timesformer_divST_8xb8-8x32x1-15e_kinetics400-rgb.py',
     dict(clip_len=8, interval=4, size=224, short_side=256), 'TimeSformer'),
    ('slowfast/slowfast_r50_8xb8-4x16x1-256e_kinetics400-rgb.py',
     dict(clip_len=16, interval=1), 'ResNet3dSlowFast'),
])
def test_fixed_shape_models_fail_before_training(stock, kw, message, videos,
                                                 tmp_path):
    cfg = toy_config(
        stock, videos, work_dir=str(tmp_path), multi_grid={}, **kw)
    if 'pretrained' in cfg.model.backbone:
        cfg.model.backbone.pretrained = None
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError) as info:
        runner.train()
    assert message in str(info.value) and 'multi_grid' in str(info.value)
    assert 'frames x' in str(info.value)
    assert runner.iter == 0
    assert not osp.exists(osp.join(tmp_path, 'inputs.json'))


def test_2d_recogniser_is_refused_before_building(videos, tmp_path):
    cfg = toy_config(
        'tsn/tsn_imagenet-pretrained-r50_8xb32-1x1x3-100e_kinetics400-rgb.py',
        videos,
        work_dir=str(tmp_path),
        multi_grid={},
        clip_len=1)
    with pytest.raises(ValueError, match='2D|3D recogniser'):
        Runner.from_cfg(cfg)


TUTORIAL = '''
custom_imports = dict(imports=['mmaction_multigrid'],
                      allow_failed_imports=False)
_base_ = ['{base}']
multi_grid = dict(long_cycle=True, short_cycle=True, epoch_factor=1.5,
                  long_cycle_factors=[[0.25, 0.7071], [0.5, 0.7071],
                                      [0.5, 1], [1, 1]],
                  short_cycle_factors=[0.5, 0.7071], default_s=(32, 32))
train_pipeline = [
    dict(type='SampleFrames', clip_len=32, frame_interval=1, num_clips=1),
    dict(type='RawFrameDecode'),
    dict(type='Resize', scale=(-1, 40)),
    dict(type='RandomResizedCrop'),
    dict(type='Resize', scale=(32, 32), keep_ratio=False),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='FormatShape', input_format='CTHW'),
    dict(type='PackActionInputs')
]
train_dataloader = dict(dataset=dict(
    pipeline=train_pipeline, short_cycle_factors=[0.5, 0.7071],
    default_s=(32, 32)))
'''


def test_seed_tutorial_config_on_rawframes(rawframes, tmp_path):
    """The 0.x tutorial's four steps, followed literally, still train."""
    base = toy_config(
        I3D,
        rawframes,
        max_epochs=3,
        milestones=(2, ),
        work_dir=str(tmp_path / 'work'))
    base.pop('multi_grid', None)
    base.dump(str(tmp_path / 'base.py'))
    (tmp_path /
     'tutorial.py').write_text(TUTORIAL.format(base=tmp_path / 'base.py'))
    from mmengine.config import Config
    cfg = Config.fromfile(str(tmp_path / 'tutorial.py'))
    runner = train(cfg)
    got = recorded(tmp_path / 'work')
    sched = ref.long_cycle(32, (32, 32), 3, [2], ref.LONG, (0.5, 0.7071), True,
                           1.5)
    assert runner.max_epochs == sched[-1][2] == got[-1][0] + 1
    assert {g[2][2] for g in got} == {8, 16, 32}
    assert all(g[2][1:] in ([3, 8, 16, 16], [3, 8, 23, 23], [3, 16, 16, 16],
                            [3, 16, 23, 23], [3, 16, 32, 32], [3, 32, 16, 16],
                            [3, 32, 23, 23], [3, 32, 32, 32]) for g in got)


def test_explicit_runner_type_and_pure_conversion(videos, tmp_path):
    """Without relying on the switch: runner_type or convert_config."""
    from mmengine.registry import RUNNERS

    from mmaction_multigrid import MultiGridRunner, convert_config
    cfg = toy_config(I3D, videos, work_dir=str(tmp_path), multi_grid={})
    cfg.runner_type = 'MultiGridRunner'
    runner = RUNNERS.build(cfg)
    assert isinstance(runner, MultiGridRunner)
    assert runner.cfg.train_dataloader.dataset.type == 'MultiGridDataset'
    converted = convert_config(cfg)
    assert converted.param_scheduler == [dict(type='MultiGridLR')]
    assert converted.multi_grid_stock.max_epochs == cfg.train_cfg.max_epochs
    assert cfg.train_dataloader.dataset.type == 'VideoDataset'
