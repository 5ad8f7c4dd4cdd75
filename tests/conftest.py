"""Shared fixtures: generated data sets and stock MMAction2 configs shrunk to
them (same structure, small inputs, short schedules)."""
import os
import os.path as osp
import subprocess
import sys

import mmaction
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.utils import ManagerMixin

from mmaction_multigrid.tools.synthetic import dataset_cfg, make_dataset

TESTS = osp.dirname(osp.abspath(__file__))
STOCK = osp.join(
    osp.dirname(mmaction.__file__), '.mim', 'configs', 'recognition')
TOOLS = osp.join(osp.dirname(mmaction.__file__), '.mim', 'tools')
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
import recorder  # noqa: E402,F401  (registers InputRecorder)
import reference as ref  # noqa: E402
from probes import TINY_I3D, with_filenames  # noqa: E402

# mmengine 0.10.7 + torch >= 2.6: checkpoints need weights_only=False
# (environment.md); the same variable a user sets for tools/test.py.
os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
# Toy runs with 1-clip BN groups can blow up activations; denormal floats
# then make CPU kernels crawl.
torch.set_flush_denormal(True)


def _manager_classes() -> list:
    """Every ``ManagerMixin`` class loaded so far (loggers, message hubs,
    visualizers of every registry)."""
    found, todo = [], [ManagerMixin]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.fixture(autouse=True)
def forget_mmengine_instances():
    """Drops the global instances (logger, message hub, visualizer) that a
    test's Runners created.

    MMEngine 0.10.7 names them after the Runner's start second: a Runner
    built in the same second as one of the previous test gets that test's
    logger and visualizer back, and writes its log and ``config.py`` into
    the previous test's work_dir, which pytest has deleted by then
    (``tmp_path_retention_policy = failed``). Checked by
    ``test_isolation.py``.
    """
    before = {cls: set(cls._instance_dict) for cls in _manager_classes()}
    yield
    for cls in _manager_classes():
        for name in set(cls._instance_dict) - before.get(cls, set()):
            instance = cls._instance_dict.pop(name)
            if isinstance(instance, MMLogger):
                for handler in instance.handlers[:]:
                    handler.close()
                    instance.removeHandler(handler)


@pytest.fixture(scope='session')
def videos(tmp_path_factory):
    """4 classes x 4 training videos of 40 frames (and 2 val per class)."""
    return make_dataset(
        str(tmp_path_factory.mktemp('videos')),
        videos_per_class=4,
        num_frames=40,
        size=(48, 64))


@pytest.fixture(scope='session')
def videos32(tmp_path_factory):
    """8 training videos per class: room for a per-GPU batch of 2."""
    return make_dataset(
        str(tmp_path_factory.mktemp('videos32')),
        videos_per_class=8,
        num_frames=40,
        size=(48, 64))


@pytest.fixture(scope='session')
def rawframes(tmp_path_factory):
    return make_dataset(
        str(tmp_path_factory.mktemp('rawframes')),
        videos_per_class=4,
        num_frames=40,
        size=(48, 64),
        fmt='rawframes')


def _shrink_pipeline(pipeline, clip_len, interval, size, short_side, fmt):
    out = []
    for t in pipeline:
        t = dict(t)
        kind = t['type']
        if fmt == 'rawframes' and kind in ('DecordInit', ):
            continue
        if fmt == 'rawframes' and kind == 'DecordDecode':
            t = dict(type='RawFrameDecode')
        if kind in ('SampleFrames', 'DenseSampleFrames'):
            t['clip_len'] = clip_len
            t['frame_interval'] = interval
        elif kind == 'Resize' and t.get('keep_ratio', True) is not False:
            t['scale'] = (-1, short_side)
        elif kind == 'Resize':
            t['scale'] = (size, size)
        elif kind == 'MultiScaleCrop':
            t['input_size'] = size
        elif kind in ('CenterCrop', 'ThreeCrop', 'TenCrop'):
            t['crop_size'] = size
        elif kind == 'RandomCrop':
            t['size'] = size
        out.append(t)
    return out


def toy_config(stock: str,
               data: dict,
               clip_len: int = 32,
               interval: int = 1,
               size: int = 32,
               short_side: int = 40,
               batch_size: int = 1,
               max_epochs: int = 4,
               milestones=(2, 3),
               warmup: int = 0,
               work_dir: str = None,
               multi_grid: dict = None,
               options: dict = None) -> Config:
    """A stock config from the installed MMAction2, shrunk to toy data.

    Pipelines keep their transforms (only sizes change); the schedule keeps
    its kind (MultiStepLR, plus LinearLR warm-up when ``warmup``).
    ``options`` are merged last, as ``--cfg-options`` would be.
    """
    cfg = Config.fromfile(osp.join(STOCK, stock))
    backbone = cfg.model.backbone
    for key in ('pretrained', ):
        if key in backbone:
            backbone[key] = None
    if 'pretrained2d' in backbone:
        backbone['pretrained2d'] = False
    for path in ('slow_pathway', 'fast_pathway'):
        if path in backbone:
            backbone[path].update(pretrained=None)
    cfg.model.cls_head.num_classes = data['num_classes']
    for split, name in (('train', 'train_dataloader'),
                        ('val', 'val_dataloader'), ('val', 'test_dataloader')):
        loader = cfg[name]
        pipeline = loader.dataset.pipeline
        loader.dataset = dataset_cfg(
            data,
            _shrink_pipeline(pipeline, clip_len, interval, size, short_side,
                             data['fmt']), split)
        loader.num_workers = 0
        loader.persistent_workers = False
    cfg.train_dataloader.batch_size = batch_size
    # Toy data and 8x-16x multigrid LR multipliers: a small base LR keeps
    # the weights finite (denormals make a diverged CPU run crawl).
    cfg.optim_wrapper.optimizer.lr = 0.001
    cfg.train_cfg.max_epochs = max_epochs
    cfg.train_cfg.val_interval = 1
    cfg.train_cfg.val_begin = 1
    schedulers = [
        dict(
            type='MultiStepLR',
            begin=0,
            end=max_epochs,
            by_epoch=True,
            milestones=list(milestones),
            gamma=0.1)
    ]
    if warmup:
        schedulers.insert(
            0,
            dict(
                type='LinearLR',
                start_factor=0.1,
                by_epoch=True,
                begin=0,
                end=warmup,
                convert_to_iter_based=True))
    cfg.param_scheduler = schedulers
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 1
    cfg.default_hooks.checkpoint.max_keep_ckpts = -1
    cfg.default_hooks.checkpoint.pop('save_best', None)
    cfg.env_cfg = dict(
        cudnn_benchmark=False,
        mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
        dist_cfg=dict(backend='gloo'))
    cfg.randomness = dict(seed=0, deterministic=False)
    cfg.auto_scale_lr = dict(enable=False, base_batch_size=batch_size)
    if options:
        cfg.merge_from_dict(options)
    if work_dir:
        cfg.work_dir = work_dir
    if multi_grid is not None:
        cfg.custom_imports = dict(
            imports=['mmaction_multigrid', 'recorder'],
            allow_failed_imports=False)
        cfg.multi_grid = multi_grid
    else:
        cfg.custom_imports = dict(
            imports=['recorder'], allow_failed_imports=False)
    cfg.custom_hooks = list(cfg.get('custom_hooks')
                            or []) + [dict(type='InputRecorder')]
    return cfg


def train_with_tools(cfg, tmp_path, name='config.py', timeout=900):
    """``python tools/train.py CONFIG`` in a fresh process, the config
    written as ``tmp_path/name``; returns the work dir."""
    path = tmp_path / name
    cfg.dump(str(path))
    work = tmp_path / 'work'
    env = dict(
        os.environ,
        PYTHONPATH=TESTS + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([
        sys.executable,
        osp.join(TOOLS, 'train.py'),
        str(path), '--work-dir',
        str(work)
    ],
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def small_config(data, work_dir, batch_size=1, options=None, **multi_grid):
    """The stock I3D config, tiny (``probes.TINY_I3D``), stock E=2 with a
    milestone at 1 (3 multigrid epochs), recording every batch's samples
    (``probes.SampleRecorder``)."""
    cfg = toy_config(
        'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py',
        data,
        work_dir=str(work_dir),
        max_epochs=2,
        milestones=(1, ),
        batch_size=batch_size,
        multi_grid=multi_grid,
        options=dict(
            TINY_I3D, **{
                'train_cfg.val_interval': 100,
                'default_hooks.checkpoint.interval': 100,
                **(options or {})
            }))
    cfg.custom_imports['imports'].append('probes')
    cfg.custom_hooks.append(dict(type='SampleRecorder'))
    with_filenames(cfg)
    return cfg


def schedule_plan(batch_size=1, epoch_lengths=(), **schedule):
    """A plan of ``MultiGridSchedule(batch_size=batch_size, **schedule)``
    with default options, for pieces tested without a Runner."""
    from mmaction_multigrid import (MultiGridOptions, MultiGridPlan,
                                    MultiGridSchedule)
    return MultiGridPlan(
        options=MultiGridOptions(),
        schedule=MultiGridSchedule(batch_size=batch_size, **schedule),
        stock={},
        epoch_lengths=tuple(epoch_lengths))


def scheduled(n_samples, batch_size=1, drop_last=True, lr=False):
    """[(epoch, iter, shape)] the reference gives for ``n_samples`` (and
    the LR with ``lr``)."""
    rows = ref.expected_run(
        n_samples, 32, 32, batch_size, 2, [1], 0.001, drop_last=drop_last)
    return rows if lr else [row[:3] for row in rows]
