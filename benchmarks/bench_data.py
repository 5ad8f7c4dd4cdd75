"""Data pipeline alone: clips per second at each multigrid shape.

For ``VideoDataset`` (decord) and ``RawframeDataset`` on the data set of
``bench_train.py`` (generated 96x128 clips of 48 frames), the demo config's
train pipeline (16x1 clips, Resize(-1, 72), MultiScaleCrop 64, Resize 64x64)
is loaded through a torch ``DataLoader`` over ``MultiGridDataset`` whose
batches carry ``ShapedIndex`` indices of one shape at a time, with 1 and 2
workers. Two pipelines per shape:

- ``package``: what ``MultiGridDataset`` runs (``reshape_pipeline``: fewer
  frames decoded, early Resize and crop scaled to the shape);
- ``naive``: the same clip length and interval, but the stock early Resize
  and crop at full size, only the last Resize shrinks to the shape (what
  rescaling only the output would cost, for comparison).

``--profile`` also times each transform in-process (no workers) at the
default and the smallest shape, to show where a clip's time goes.

    python benchmarks/bench_data.py [--clips 256] [--profile]
"""
import argparse
import os
import os.path as osp
import sys
import time
from collections import defaultdict

import torch
from mmaction.registry import TRANSFORMS
from mmengine.dataset import Compose, pseudo_collate
from torch.utils.data import DataLoader

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, osp.dirname(HERE))

from mmaction_multigrid.datasets.pipeline import (_last_size_index, _set_size,
                                                  reshape_pipeline)
from mmaction_multigrid.datasets.wrapper import (MultiGridDataset, ShapedIndex,
                                                 SkipBroken)
from mmaction_multigrid.tools.cli import DEMO_CONFIG, config_plan, load_config
from mmaction_multigrid.tools.synthetic import dataset_cfg, make_dataset


def stock_pipeline(fmt: str) -> list:
    """The demo config's train pipeline, for videos or rawframes."""
    pipeline = load_config(DEMO_CONFIG).train_pipeline
    if fmt == 'rawframes':
        pipeline = [
            dict(type='RawFrameDecode') if t['type'] == 'DecordDecode' else t
            for t in pipeline if t['type'] != 'DecordInit'
        ]
    return [dict(t) for t in pipeline]


def naive_pipeline(pipeline: list, shape: ShapedIndex) -> list:
    """Stock pipeline with the shape's clip length, full-size processing,
    and only the last size-setting transform shrunk to the shape."""
    new = reshape_pipeline(pipeline, shape.clip_len, shape.frame_interval,
                           (64, 64))  # the default size: stock sizes
    last = _last_size_index(new)
    new[last] = _set_size(new[last], (shape.height, shape.width))
    return new


class NaiveMultiGridDataset(MultiGridDataset):
    """``MultiGridDataset`` with the naive pipeline per shape."""

    def _pipeline(self, leaf, shape):
        key = (leaf, shape._replace(index=0))
        if key not in self._pipelines:
            cfg = naive_pipeline(self._leaves[leaf][1], shape)
            self._pipelines[key] = SkipBroken(
                Compose([TRANSFORMS.build(t) for t in cfg]))
        return self._pipelines[key]


class ShapeBatches:
    """Batches of ``batch`` ShapedIndex (or plain int) indices."""

    def __init__(self, n: int, total: int, batch: int, shape=None):
        self.n, self.total, self.batch, self.shape = n, total, batch, shape

    def __len__(self):
        return self.total // self.batch

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        order = torch.randint(self.n, (self.total, ), generator=g).tolist()
        for k in range(len(self)):
            chunk = order[k * self.batch:(k + 1) * self.batch]
            yield [
                i if self.shape is None else self.shape._replace(index=i)
                for i in chunk
            ]


def clips_per_second(dataset, shape, workers: int, clips: int,
                     batch: int) -> float:
    """Clips/s of a DataLoader, the first batch (worker start) excluded."""
    loader = DataLoader(
        dataset,
        batch_sampler=ShapeBatches(len(dataset), clips + batch, batch, shape),
        num_workers=workers,
        collate_fn=pseudo_collate)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    n = sum(len(b['inputs']) for b in it)
    return n / (time.perf_counter() - start)


def timed(dataset, shape, n: int) -> float:
    """Seconds to load ``n`` clips in-process."""
    start = time.perf_counter()
    for i in range(n):
        dataset[shape._replace(index=i % len(dataset))]
    return time.perf_counter() - start


def profile(dataset: MultiGridDataset, shape: ShapedIndex, n: int) -> dict:
    """Seconds per clip spent in each transform, in-process."""
    pipeline = dataset._pipeline(0, shape).pipeline
    leaf = dataset._leaves[0][0]
    times = defaultdict(float)
    for i in range(n):
        results = leaf.get_data_info(i % len(leaf))
        for t in pipeline.transforms:
            start = time.perf_counter()
            results = t(results)
            times[type(t).__name__] += time.perf_counter() - start
    return {k: v / n for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', nargs='+', default=['video', 'rawframes'])
    parser.add_argument('--workers', nargs='+', type=int, default=[1, 2])
    parser.add_argument(
        '--clips', type=int, default=256, help='clips timed per measurement')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--profile', action='store_true')
    parser.add_argument('--work-dir', default='work_dirs/bench_train')
    args = parser.parse_args()
    torch.set_num_threads(1)
    from mmengine.registry import init_default_scope
    init_default_scope('mmaction')
    print(f'load average {os.getloadavg()}')
    cfg = load_config(DEMO_CONFIG)
    cfg.train_cfg.max_epochs = 30
    cfg.param_scheduler[1].update(end=30, milestones=[12, 24])
    schedule = config_plan(cfg).schedule
    shapes = sorted(
        {(s.clip_len, s.frame_interval) + tuple(s.size)
         for e in range(schedule.max_epochs)
         for s in schedule.batch_shapes(e)},
        key=lambda s: s[0] * s[2] * s[3])
    default = ShapedIndex(0, 16, 2, 64, 64)
    for fmt in args.data:
        info = make_dataset(
            osp.join(args.work_dir, 'data_' + fmt),
            videos_per_class=32,
            val_per_class=8,
            fmt=fmt)
        ds_cfg = dataset_cfg(info, stock_pipeline(fmt))
        datasets = dict(
            package=MultiGridDataset(ds_cfg),
            naive=NaiveMultiGridDataset(ds_cfg))
        print(f'\n### {fmt}: clips/s through a DataLoader (batch '
              f'{args.batch}, {args.clips} clips timed, first batch excluded,'
              f' best of {args.repeat}); ms/clip in-process (best of '
              f'{args.repeat} x {args.clips // 4} clips)\n')
        head = '| shape T x H x W (interval) | voxels vs default |'
        for w in args.workers:
            head += f' clips/s {w}w | vs default {w}w |'
        head += ' ms/clip package | ms/clip naive | naive/package |'
        print(head)
        print('|' + '---|' * (5 + 2 * len(args.workers)))

        def best(fn):
            return max(fn() for _ in range(args.repeat))

        def ms_per_clip(ds, shape):
            n = args.clips // 4
            return 1e3 / best(lambda: n / timed(ds, shape, n))

        base = {
            w:
            best(lambda: clips_per_second(datasets['package'], None, w, args.
                                          clips, args.batch))
            for w in args.workers
        }
        print('| stock pipeline, int indices | 1.000 |' +
              ''.join(f' {base[w]:.0f} | 1.00x |'
                      for w in args.workers) + ' | | |')
        for clip_len, interval, h, w_ in shapes:
            shape = ShapedIndex(0, clip_len, interval, h, w_)
            cells = ''
            for w in args.workers:
                pkg = best(lambda: clips_per_second(datasets['package'], shape,
                                                    w, args.clips, args.batch))
                cells += f' {pkg:.0f} | {pkg / base[w]:.2f}x |'
            p_ms = ms_per_clip(datasets['package'], shape)
            n_ms = (
                p_ms if
                (h, w_) == (64, 64) else ms_per_clip(datasets['naive'], shape))
            ratio = clip_len * h * w_ / (16 * 64 * 64)
            print(
                f'| {clip_len}x{h}x{w_} ({interval}) | {ratio:.3f} |' + cells +
                f' {p_ms:.2f} | {n_ms:.2f} | {n_ms / p_ms:.2f}x |',
                flush=True)
        if args.profile:
            small = ShapedIndex(0, *shapes[0])
            print(f'\n{fmt}: ms per clip per transform, in-process '
                  '(no workers)\n')
            profs = {
                'default 16x64x64':
                profile(datasets['package'], default, 64),
                f'package {small.clip_len}x{small.height}x{small.width}':
                profile(datasets['package'], small, 64),
                f'naive {small.clip_len}x{small.height}x{small.width}':
                profile(datasets['naive'], small, 64)
            }
            names = list(next(iter(profs.values())))
            print('| transform | ' + ' | '.join(profs) + ' |')
            print('|---|' + '---|' * len(profs))
            for name in names + ['total']:
                cells = [
                    sum(p.values()) if name == 'total' else p.get(name, 0)
                    for p in profs.values()
                ]
                print(f'| {name} | ' + ' | '.join(f'{1000 * c:.2f}'
                                                  for c in cells) + ' |')


if __name__ == '__main__':
    main()
