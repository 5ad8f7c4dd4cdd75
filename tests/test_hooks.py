"""The multigrid hooks and loop through a real Runner, one concern each:
one schedule shared by sampler, loop and LR; the loop's epoch lengths and
``max_iters``; the model check runs the whole model; precise BN runs exactly
before validations and checkpoints and reaches the neck's BN layers."""
import re

import pytest
import reference as ref
import torch
from conftest import toy_config
from mmaction.models.heads import I3DHead
from mmaction.registry import HOOKS, MODELS
from mmengine.hooks import Hook
from mmengine.runner import Runner
from probes import TINY_I3D

import mmaction_multigrid  # noqa: F401  (installs the switch)
from mmaction_multigrid import MultiGridLR, MultiGridTrainLoop, PreciseBNHook

I3D = 'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py'
TPN = ('tpn/tpn-slowonly_imagenet-pretrained-r50_8xb8-8x8x1-150e_'
       'kinetics400-rgb.py')
LONG = ((0.25, 0.5**0.5), (0.5, 0.5**0.5), (0.5, 1), (1, 1))
SHORT = (0.5, 0.5**0.5)


def _runner(data, tmp_path, multi_grid=None, **options):
    cfg = toy_config(
        I3D,
        data,
        work_dir=str(tmp_path),
        max_epochs=4,
        milestones=(2, 3),
        multi_grid=multi_grid or {},
        options=dict(TINY_I3D, **options))
    return Runner.from_cfg(cfg)


def _log(runner) -> str:
    with open(f'{runner.log_dir}/{runner.timestamp}.log') as f:
        return f.read()


def test_one_schedule_for_sampler_loop_and_lr(videos, tmp_path):
    runner = _runner(videos, tmp_path)
    runner.train()
    sampler = runner.train_dataloader.batch_sampler
    (scheduler, ) = runner.param_schedulers
    assert isinstance(runner.train_loop, MultiGridTrainLoop)
    assert isinstance(scheduler, MultiGridLR)
    assert scheduler.plan is runner.train_loop.plan is runner.plan
    assert sampler.schedule is runner.plan.schedule
    # The converted config keeps the stock schedule once.
    assert runner.cfg.param_scheduler == [dict(type='MultiGridLR')]
    assert runner.cfg.multi_grid_stock.max_epochs == 4
    assert 'schedule' not in runner.cfg.train_dataloader.batch_sampler


def test_loop_owns_epoch_lengths_and_max_iters(videos, tmp_path):
    runner = _runner(videos, tmp_path)
    runner.train()
    sched = ref.long_cycle(32, (32, 32), 4, [2, 3], LONG, SHORT, True, 1.5)
    lengths = []
    for epoch in range(sched[-1][2]):
        cycle = ref.batches(1,
                            ref.base_at(sched, epoch)[1], (32, 32), SHORT,
                            True)
        lengths.append(ref.epoch_batches(16, [c[0] for c in cycle]))
    assert runner.train_loop.epoch_lengths == lengths
    assert runner.train_loop.max_iters == runner.iter == sum(lengths)
    log = _log(runner)
    assert f'{sum(lengths)} iterations' in log
    # MMEngine's logger prints "Epoch(train) [e][i/n]" with this epoch's n.
    for epoch, n in enumerate(lengths, 1):
        assert re.search(rf'Epoch\(train\)\s+\[{epoch}\]\[\s*{n}/{n}\]', log)


@MODELS.register_module(force=True)
class FlattenFCHead(I3DHead):
    """A head whose classifier is sized for one feature-map shape (no
    pooling), as a fixed-shape neck or head would be."""

    def __init__(self, num_classes, in_channels, feat_size, **kwargs):
        super().__init__(num_classes, in_channels, **kwargs)
        self.fc_cls = torch.nn.Linear(in_channels * feat_size, num_classes)

    def forward(self, x, **kwargs):
        return self.fc_cls(x.flatten(1))


def test_model_check_runs_the_head(videos, tmp_path):
    # Default shape 32x32x32 -> ResNet3d-18 features 64 x 4 x 1 x 1.
    runner = _runner(
        videos, tmp_path, **{
            'model.cls_head.type': 'FlattenFCHead',
            'model.cls_head.feat_size': 4
        })
    with pytest.raises(
            ValueError,
            match=r'cannot take the multigrid input '
            r'of \d+ frames x \d+x\d+'):
        runner.train()
    assert runner.iter == 0


# (precise_bn interval, val settings, checkpoint settings) -> 1-based epochs
# after which precise BN runs, worked out by hand for 6 multigrid epochs.
PRECISE_CASES = [
    pytest.param(
        None,
        dict(val_interval=2),
        dict(interval=100, save_last=False), {2, 4, 6},
        None,
        id='every-validation'),
    pytest.param(
        None,
        None,
        dict(interval=4, save_last=True), {6},
        'the first after epoch 4, would hold BN statistics',
        id='checkpoint-without-validation-warns'),
    pytest.param(
        2,
        None,
        dict(interval=4, save_last=True), {2, 4, 6},
        None,
        id='interval-covers-checkpoints'),
    pytest.param(
        2,
        dict(val_interval=3, val_begin=4, dynamic_intervals=[(4, 1)]),
        dict(interval=100, save_last=False), {2, 4, 5, 6},
        None,
        id='interval-and-dynamic-validation'),
    pytest.param(
        None,
        None,
        dict(interval=2, by_epoch=False, save_last=False), {6},
        'checkpoints saved by iteration',
        id='iteration-checkpoints'),
]


@pytest.mark.parametrize('interval,val,ckpt,epochs,warning', PRECISE_CASES)
def test_precise_bn_before_validation_and_checkpoint(videos, tmp_path,
                                                     interval, val, ckpt,
                                                     epochs, warning):
    """Precise BN runs after every ``interval``-th epoch, before each
    validation and after the last epoch; checkpoints saved in between are
    named in one warning."""
    options = {f'default_hooks.checkpoint.{k}': v for k, v in ckpt.items()}
    if val is None:
        options.update(val_dataloader=None, val_cfg=None, val_evaluator=None)
    else:
        options.update({f'train_cfg.{k}': v for k, v in val.items()})
    precise = dict(num_iters=1)
    if interval:
        precise['interval'] = interval
    runner = _runner(videos, tmp_path, dict(precise_bn=precise), **options)
    runner.train()
    ran = {
        int(e)
        for e in re.findall(r'Precise BN after epoch (\d+):', _log(runner))
    }
    assert ran == epochs
    warned = 'Multigrid: ' in _log(runner) and 'precise BN' in _log(runner)
    if warning is None:
        assert 'would hold BN statistics' not in _log(runner)
    else:
        assert warning in _log(runner) and warned


@HOOKS.register_module(force=True)
class BNSnapshot(Hook):
    """Copies every BN layer's running mean after each train epoch, at the
    priority its config gives (one before and one after PreciseBNHook)."""

    def __init__(self):
        self.means = []

    def after_train_epoch(self, runner):
        self.means.append({
            name: m.running_mean.clone()
            for name, m in runner.model.named_modules() if
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
        })


def test_precise_bn_updates_bn_in_the_neck(videos32, tmp_path):
    cfg = toy_config(
        TPN,
        videos32,
        work_dir=str(tmp_path),
        clip_len=8,
        interval=4,
        batch_size=2,
        max_epochs=2,
        milestones=(1, ),
        multi_grid=dict(precise_bn=dict(num_iters=2)))
    cfg.custom_hooks += [
        dict(type='BNSnapshot', priority='HIGH'),
        dict(type='BNSnapshot', priority='NORMAL')
    ]
    runner = Runner.from_cfg(cfg)
    runner.train()
    before, after = (h for h in runner.hooks if isinstance(h, BNSnapshot))
    assert [
        type(h).__name__ for h in runner.hooks
        if isinstance(h, (BNSnapshot, PreciseBNHook))
    ] == ['BNSnapshot', 'PreciseBNHook', 'BNSnapshot']
    last_before, last_after = before.means[-1], after.means[-1]
    neck = [name for name in last_before if name.startswith('neck.')]
    assert neck, 'the TPN neck has BN layers'
    for name in last_before:
        assert not torch.equal(last_before[name], last_after[name]), name


def _before_train(runner):
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    runner.call_hook('before_train')
    return runner


def test_video_without_prepared_copy_is_one_warning_with_the_command(
        videos, rawframes, tmp_path):
    runner = _before_train(_runner(videos, tmp_path / 'video'))
    warnings = [
        line for line in _log(runner).splitlines()
        if 'WARNING' in line and 'decodes video files' in line
    ]
    assert len(warnings) == 1
    assert 'python -m mmaction_multigrid prepare' in warnings[0]
    assert '--measure' in warnings[0]
    runner = _before_train(_runner(rawframes, tmp_path / 'frames'))
    assert 'decodes video files' not in _log(runner)


def test_bn_grouping_splits_per_stage(videos, tmp_path):
    """``bn_grouping='splits'``: each epoch's sub-batch BN layers split
    every batch into ``floor(base shape's clips / bn_base_size)`` groups
    (PySlowFast's NUM_SPLITS), logged with the epoch."""
    runner = _runner(videos, tmp_path, dict(bn_grouping='splits'))
    runner.train()
    epochs = re.findall(
        r'Multigrid epoch (\d+):.*clips/GPU \[([\d, ]+)\].*'
        r', (\d+) BN group\(s\) per batch', _log(runner))
    assert [int(e) for e, _, _ in epochs] == list(range(runner.max_epochs))
    for _, sizes, groups in epochs:
        base = int(sizes.split(',')[-1])  # the base shape's batch, last
        assert int(groups) == base // 1  # bn_base_size: the stock batch, 1
    layers = [m for m in runner.model.modules() if hasattr(m, 'splits')]
    assert layers and {m.splits for m in layers} == {int(epochs[-1][2])}
    assert {int(g) for _, _, g in epochs} != {1}  # groups vary by stage
