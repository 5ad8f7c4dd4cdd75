"""A config written in MMEngine's pure-Python style, as MMAction2 1.2.0
ships them (``read_base()``, classes as ``type``), converts, and trains
multigrid when its Runner is built from ``runner_type = MultiGridRunner``
(``RUNNERS.build(cfg)``, MMEngine's way to honour ``runner_type``).
In such configs MMEngine 0.10.7 skips ``custom_imports`` and imports
lazily, and MMAction2 1.1.0's ``tools/train.py`` always calls
``Runner.from_cfg``: nothing of the plugin runs and the stock schedule
trains (documented in docs/schedules.md)."""
import os
import os.path as osp
import subprocess
import sys

import pytest
from conftest import TESTS, TOOLS
from mmengine.config import Config
from test_cosine_e2e import expected_run, recorded

from mmaction_multigrid import MultiGridRunner, build_plan, convert_config

RUNTIME = '''
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook,
                            LoggerHook, ParamSchedulerHook, RuntimeInfoHook,
                            SyncBuffersHook)
from mmengine.runner import LogProcessor

from mmaction.visualization import ActionVisualizer, LocalVisBackend

default_scope = 'mmaction'
default_hooks = dict(
    runtime_info=dict(type=RuntimeInfoHook),
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, interval=1, ignore_last=False),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, interval=1),
    sampler_seed=dict(type=DistSamplerSeedHook),
    sync_buffers=dict(type=SyncBuffersHook))
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='gloo'))
log_processor = dict(type=LogProcessor, window_size=20, by_epoch=True)
vis_backends = [dict(type=LocalVisBackend)]
visualizer = dict(type=ActionVisualizer, vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
'''

MODEL = '''
from mmaction.models import (ActionDataPreprocessor, I3DHead, Recognizer3D,
                             ResNet3d)

model = dict(
    type=Recognizer3D,
    backbone=dict(
        type=ResNet3d, depth=18, base_channels=8, pretrained=None,
        pretrained2d=False, inflate=((1, 1), (1, 0), (1, 0), (0, 1)),
        conv1_kernel=(3, 7, 7), conv1_stride_t=1, pool1_stride_t=1),
    cls_head=dict(type=I3DHead, num_classes=4, in_channels=64,
                  spatial_type='avg', dropout_ratio=0.0,
                  average_clips='prob'),
    data_preprocessor=dict(
        type=ActionDataPreprocessor, mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], format_shape='NCTHW'))
'''

CONFIG = '''
from mmengine.config import read_base

with read_base():
    from ._base_.models.tiny_i3d import *
    from ._base_.default_runtime import *

from mmengine.dataset import DefaultSampler
from mmengine.optim import CosineAnnealingLR, LinearLR
from mmengine.runner import EpochBasedTrainLoop, TestLoop, ValLoop
from torch.optim import SGD

from mmaction.datasets import (CenterCrop, DecordDecode, DecordInit, Flip,
                               FormatShape, PackActionInputs,
                               RandomResizedCrop, Resize, SampleFrames,
                               VideoDataset)
from mmaction.evaluation import AccMetric
from recorder import InputRecorder
{switch}
train_pipeline = [
    dict(type=DecordInit),
    dict(type=SampleFrames, clip_len=8, frame_interval=1, num_clips=1),
    dict(type=DecordDecode),
    dict(type=Resize, scale=(-1, 40)),
    dict(type=RandomResizedCrop),
    dict(type=Resize, scale=(32, 32), keep_ratio=False),
    dict(type=Flip, flip_ratio=0.5),
    dict(type=FormatShape, input_format='NCTHW'),
    dict(type=PackActionInputs)
]
val_pipeline = [
    dict(type=DecordInit),
    dict(type=SampleFrames, clip_len=8, frame_interval=1, num_clips=1,
         test_mode=True),
    dict(type=DecordDecode),
    dict(type=Resize, scale=(-1, 40)),
    dict(type=CenterCrop, crop_size=32),
    dict(type=FormatShape, input_format='NCTHW'),
    dict(type=PackActionInputs)
]
train_dataloader = dict(
    batch_size=1, num_workers=0,
    sampler=dict(type=DefaultSampler, shuffle=True),
    dataset=dict(type=VideoDataset, ann_file='{train_ann}',
                 data_prefix=dict(video='{prefix}'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2, num_workers=0,
    sampler=dict(type=DefaultSampler, shuffle=False),
    dataset=dict(type=VideoDataset, ann_file='{val_ann}',
                 data_prefix=dict(video='{prefix}'),
                 pipeline=val_pipeline, test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(type=AccMetric)
test_evaluator = val_evaluator

train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=4, val_begin=1,
                 val_interval=1)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
optim_wrapper = dict(
    optimizer=dict(type=SGD, lr=0.001, momentum=0.9, weight_decay=1e-4),
    clip_grad=dict(max_norm=40, norm_type=2))
param_scheduler = [
    dict(type=LinearLR, start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, T_max=4, eta_min=0, by_epoch=True,
         begin=0, end=4)
]
custom_hooks = [dict(type=InputRecorder)]
randomness = dict(seed=0)
multi_grid = dict()
'''

SWITCH = '''
from mmaction_multigrid import MultiGridRunner

runner_type = MultiGridRunner
'''
# What works in a text config, and not here (checked below).
IGNORED_SWITCH = '''
import mmaction_multigrid

custom_imports = dict(imports=['mmaction_multigrid'],
                      allow_failed_imports=False)
'''


def _write(tmp_path, videos, switch):
    root = tmp_path / 'configs'
    (root / '_base_' / 'models').mkdir(parents=True)
    (root / '_base_' / 'default_runtime.py').write_text(RUNTIME)
    (root / '_base_' / 'models' / 'tiny_i3d.py').write_text(MODEL)
    path = root / 'tiny_i3d_cosine_multigrid.py'
    path.write_text(
        CONFIG.format(
            switch=switch,
            train_ann=videos['train_ann'],
            val_ann=videos['val_ann'],
            prefix=videos['data_prefix']))
    return path


# A fresh process that builds the Runner as MMEngine documents for
# ``runner_type`` (MMDetection's and MMPretrain's tools/train.py do this).
BUILD = """
import sys
from mmengine.config import Config
from mmengine.registry import RUNNERS
cfg = Config.fromfile(sys.argv[1])
cfg.work_dir = sys.argv[2]
RUNNERS.build(cfg).train()
"""


def _train(path, work, tools_train=False):
    """Train ``path`` in a fresh process: MMAction2's ``tools/train.py``,
    or :data:`BUILD`."""
    env = dict(
        os.environ,
        PYTHONPATH=TESTS + os.pathsep + os.environ.get('PYTHONPATH', ''))
    command = (
        [osp.join(TOOLS, 'train.py'),
         str(path), '--work-dir',
         str(work)] if tools_train else
        ['-c', BUILD, str(path), str(work)])
    proc = subprocess.run([sys.executable, *command],
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_class_typed_config_converts(videos, tmp_path):
    """Classes as ``type`` everywhere: loop, schedulers, dataset,
    transforms, runner_type."""
    cfg = Config.fromfile(str(_write(tmp_path, videos, SWITCH)))
    out = convert_config(cfg)
    assert [s['type'] for s in out.multi_grid_stock.param_scheduler
            ] == ['LinearLR', 'CosineAnnealingLR']
    schedule = build_plan(out).schedule
    assert (schedule.clip_len, schedule.size) == (8, (32, 32))
    assert out.train_dataloader.dataset.type == 'MultiGridDataset'
    # The config's own runner_type (the class) is kept.
    assert out.runner_type is MultiGridRunner
    assert out.train_cfg.max_epochs == 6


def test_pure_python_config_trains_multigrid(videos, tmp_path):
    path = _write(tmp_path, videos, SWITCH)
    _train(path, tmp_path / 'work')
    schedulers = [
        dict(
            type='LinearLR',
            start_factor=0.1,
            begin=0,
            end=1,
            convert_to_iter_based=True),
        dict(type='CosineAnnealingLR', T_max=4, eta_min=0, begin=0, end=4)
    ]
    want = expected_run(16, 8, 32, 1, schedulers, 0.001)
    got = recorded(tmp_path / 'work')
    assert [g[:3] for g in got] == [w[:3] for w in want]
    for g, w in zip(got, want):
        assert g[3] == pytest.approx(w[3], rel=1e-6), (g, w)


def test_mmaction_tools_train_ignores_the_switches(videos, tmp_path):
    """``custom_imports``, a bare ``import mmaction_multigrid`` and
    ``runner_type``: MMAction2 1.1.0's tools/train.py runs none of them in a
    pure-Python config, so ``multi_grid`` is silently ignored (the stock
    run); the limit docs/schedules.md states."""
    path = _write(tmp_path, videos, IGNORED_SWITCH + SWITCH)
    _train(path, tmp_path / 'work', tools_train=True)
    got = recorded(tmp_path / 'work')
    assert {tuple(g[2]) for g in got} == {(1, 3, 8, 32, 32)}
    assert max(g[0] for g in got) == 3  # the stock 4 epochs
