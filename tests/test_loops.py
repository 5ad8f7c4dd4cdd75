"""MultiGridTrainLoop: with persistent workers the loader prefetches across
epochs, and training sees exactly the batches of the stock epoch loop."""
import os.path as osp

from conftest import toy_config
from mmengine.runner import Runner
from probes import TINY_I3D, read_samples, with_filenames

import mmaction_multigrid  # noqa: F401  (installs the switch)
from mmaction_multigrid import MultiGridTrainLoop

I3D = 'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py'


def _train(data, work_dir, **loader):
    cfg = toy_config(
        I3D,
        data,
        work_dir=str(work_dir),
        max_epochs=4,
        milestones=(2, 3),
        batch_size=1,
        multi_grid={},
        options=dict(
            TINY_I3D, **{
                'train_cfg.val_interval': 2,
                'default_hooks.checkpoint.interval': 100,
                **{
                    f'train_dataloader.{k}': v
                    for k, v in loader.items()
                }
            }))
    cfg.custom_imports['imports'].append('probes')
    cfg.custom_hooks += [
        dict(type='SampleRecorder'),
        dict(type='LoaderIterators')
    ]
    with_filenames(cfg)
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = next(
        h for h in runner.hooks if type(h).__name__ == 'LoaderIterators')
    return runner, read_samples(work_dir), hook.starts


def test_prefetch_across_epochs_keeps_the_batches(videos, tmp_path):
    stock_runner, stock, stock_starts = _train(videos, tmp_path / 'stock')
    runner, got, starts = _train(
        videos,
        tmp_path / 'persistent',
        num_workers=2,
        persistent_workers=True)
    assert isinstance(runner.train_loop, MultiGridTrainLoop)
    epochs = runner.max_epochs
    assert epochs > 4 and sorted({r['epoch']
                                  for r in got}) == list(range(epochs))
    # Same epochs, iterations, clip shapes and clips, in the same order.
    assert [(r['epoch'], r['iter'], r['shape'], r['files']) for r in got] == [
        (r['epoch'], r['iter'], r['shape'], r['files']) for r in stock
    ]
    # The stock loop (no workers) starts the sampler every epoch; with
    # persistent workers it is started once, at the first epoch.
    assert stock_starts == list(range(epochs))
    assert starts == [0]
    log = open(
        osp.join(runner.log_dir,
                 osp.basename(runner.log_dir) + '.log')).read()
    assert 'prefetches across epochs' in log
    assert runner.iter == stock_runner.iter == len(got)
