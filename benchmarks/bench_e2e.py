"""End-to-end training speed of multigrid against stock, per long-cycle
stage, through the real MMEngine train loop (GPU node regime).

Generates Kinetics-like data (H.264 through PyAV's libx264 at its defaults,
a keyframe every 250 frames; the same frames as JPEG rawframes), then trains
the stock I3D R50 config of the installed MMAction2 under each condition:

- ``stock-video`` / ``stock-rawframes``: the stock config (anchors);
- ``mg-video``: the two-line change on the videos;
- ``mg-video-random``: the same with ``temporal_sampling='random'``;
- ``mg-prepared``: the config that ``prepare`` writes, on its copy;
- ``mg-rawframes``: the two-line change on the rawframes.

A multigrid condition runs once per long-cycle stage: the same config with
``multi_grid.long_cycle_factors`` set to that stage's factors alone, so the
run trains exactly that stage's batch shapes (short cycle included) with
every hook of the real run (LR scheduler, exact resume, logging, model
check). Each run builds its Runner, calls ``runner.train()``, lets the data
workers (``--workers``, default cores - 2) reach a steady state over
``--warmup`` iterations, then takes MMEngine's ``IterTimerHook`` figures
(``time``, ``data_time``) over ``--measure`` iterations; last, it times
``model.train_step`` again on the last short cycle's batches, already in
memory (compute only: data preprocessor, forward, backward, optimizer step).

The whole schedule is each stage's milliseconds per clip weighted by its
epochs in the default schedule (every epoch reads the data set once),
against the stock epochs at the stock run's milliseconds per clip. It also
reports, per run, the seconds from ``Runner.from_cfg`` to the first train
epoch (``ready``), split into building, ``train()`` set-up and
``before_train`` hooks.

    python benchmarks/bench_e2e.py [--conditions ...] [--out FILE]
    python benchmarks/bench_e2e.py --toy --device cpu   # logic check, CPU
"""
import argparse
import copy
import gc
import math
import multiprocessing
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List, Optional

import cv2
import mmaction
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, osp.dirname(HERE))

from bench_data_cost import kinetics_like_frames, write_h264
from result_json import write_result

import mmaction_multigrid  # noqa: F401  (registers, installs the switch)
from mmaction_multigrid.tools.cli import config_plan

I3D = osp.join(
    osp.dirname(mmaction.__file__), '.mim', 'configs', 'recognition', 'i3d',
    'i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py')
LONG_CYCLE = ((0.25, 0.5**0.5), (0.5, 0.5**0.5), (0.5, 1), (1, 1))
# name: (multigrid, data, extra multi_grid options)
CONDITIONS = {
    'stock-video': (False, 'video', {}),
    'stock-rawframes': (False, 'rawframes', {}),
    'mg-video': (True, 'video', {}),
    'mg-prepared': (True, 'prepared', {}),
    'mg-rawframes': (True, 'rawframes', {}),
    'mg-video-random': (True, 'video', dict(temporal_sampling='random')),
}


class Done(Exception):
    """Raised by :class:`Recorder` when a run has what it measures."""


class Recorder(Hook):
    """Start-up times, per-iteration timer figures, and the compute-only
    replay of the last short cycle's batches.

    Args:
        start: ``time.perf_counter()`` before ``Runner.from_cfg``.
        warmup: Iterations before the measured ones.
        measure: Measured iterations (a multiple of the cycle length).
        cycle: Batches per short cycle (1 for stock).
        replays: Timed ``train_step`` calls per kept batch.
    """

    priority = 'LOWEST'  # after IterTimerHook has updated the hub

    def __init__(self, start: float, warmup: int, measure: int, cycle: int,
                 replays: int) -> None:
        self.start, self.warmup, self.measure = start, warmup, measure
        self.cycle, self.replays = cycle, replays
        self.marks: Dict[str, float] = {}
        self.iters: List[dict] = []
        self.kept: List[dict] = []
        self.replay_ms: List[float] = []

    def _mark(self, name: str) -> None:
        self.marks.setdefault(name, time.perf_counter() - self.start)

    def before_run(self, runner) -> None:
        self._mark('before_run')

    def before_train(self, runner) -> None:
        self._mark('before_train_done')

    def before_train_epoch(self, runner) -> None:
        self._mark('ready')

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        hub = runner.message_hub
        inputs = data_batch['inputs']
        self.iters.append(
            dict(
                time=float(hub.get_scalar('train/time').current()),
                data_time=float(hub.get_scalar('train/data_time').current()),
                clips=len(inputs),
                shape=list(inputs[0].shape[-3:])))
        total = self.warmup + self.measure
        if len(self.iters) > total - self.cycle:
            self.kept.append(data_batch)
        if len(self.iters) == total:
            self._replay(runner)
            raise Done

    def _replay(self, runner) -> None:
        """Median ms of ``train_step`` on each kept batch."""
        model, optim = runner.model, runner.optim_wrapper
        cuda = torch.cuda.is_available()
        for batch in self.kept:  # one untimed pass
            model.train_step(batch, optim)
        for batch in self.kept:
            times = []
            for _ in range(self.replays):
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                model.train_step(batch, optim)
                if cuda:
                    torch.cuda.synchronize()
                times.append(1e3 * (time.perf_counter() - t))
            self.replay_ms.append(sorted(times)[len(times) // 2])

    def summary(self) -> dict:
        """Figures of the measured iterations."""
        measured = self.iters[self.warmup:]
        clips = sum(i['clips'] for i in measured)
        time_s = sum(i['time'] for i in measured)
        data_s = sum(i['data_time'] for i in measured)
        kept_clips = sum(len(b['inputs']) for b in self.kept)
        return dict(
            marks=self.marks,
            iterations=len(measured),
            clips=clips,
            ms_per_clip=1e3 * time_s / clips,
            data_wait_share=data_s / time_s,
            timer_compute_ms_per_clip=1e3 * (time_s - data_s) / clips,
            compute_ms_per_clip=sum(self.replay_ms) / kept_clips,
            compute_ms_per_batch=[[
                len(b['inputs']), *b['inputs'][0].shape[-3:], ms
            ] for b, ms in zip(self.kept, self.replay_ms)],
            ms_per_iter=1e3 * time_s / len(measured),
            shapes=sorted({(i['clips'], *i['shape'])
                           for i in measured}))


# ------------------------------------------------------------------ data --
def _write_sample(job) -> None:
    """One video (mp4) and its frames (JPEG folder)."""
    root, i, frames, size = job
    mp4 = osp.join(root, 'videos', 'train', f'v{i:04d}.mp4')
    folder = osp.join(root, 'rawframes', 'train', f'v{i:04d}')
    if osp.isfile(mp4) and osp.isdir(folder):
        return
    os.makedirs(folder, exist_ok=True)
    images = list(kinetics_like_frames(i, frames, size))
    write_h264(mp4 + '.tmp.mp4', images)
    for k, image in enumerate(images, 1):
        cv2.imwrite(osp.join(folder, f'img_{k:05}.jpg'), image)
    os.replace(mp4 + '.tmp.mp4', mp4)


def make_data(root: str, videos: int, frames: int, size, lines: int,
              workers: int) -> None:
    """Write the videos, rawframes and annotation files (``lines`` lines,
    the videos listed over and over, as oversampled lists do)."""
    os.makedirs(osp.join(root, 'videos', 'train'), exist_ok=True)
    jobs = [(root, i, frames, size) for i in range(videos)]
    with multiprocessing.Pool(min(workers, videos)) as pool:
        pool.map(_write_sample, jobs)
    with open(osp.join(root, 'train_video.txt'), 'w') as fv, \
            open(osp.join(root, 'train_rawframes.txt'), 'w') as fr:
        for k in range(lines):
            i = k % videos
            fv.write(f'train/v{i:04d}.mp4 {i % 4}\n')
            fr.write(f'train/v{i:04d} {frames} {i % 4}\n')


# --------------------------------------------------------------- configs --
def stock_config(args, root: str, data: str) -> Config:
    """The stock I3D R50 config on the generated data, without
    validation, test and checkpoints."""
    cfg = Config.fromfile(I3D)
    cfg.model.backbone.pretrained = None
    cfg.model.backbone.pretrained2d = False
    if args.toy:  # a small network of the same structure, for the CPU
        cfg.model.backbone.update(depth=18, base_channels=8, inflate=1)
        cfg.model.cls_head.in_channels = 64
    cfg.model.cls_head.num_classes = 4
    size = args.size
    pipeline = []
    for step in cfg.train_dataloader.dataset.pipeline:
        step = dict(step)
        if step['type'] == 'SampleFrames':
            step['clip_len'] = args.clip_len
        elif step['type'] == 'Resize' and step['scale'][0] == -1:
            step['scale'] = (-1, round(size * 256 / 224))
        elif step['type'] == 'Resize':
            step['scale'] = (size, size)
        elif step['type'] == 'MultiScaleCrop':
            step['input_size'] = size
        if data == 'rawframes':
            if step['type'] == 'DecordInit':
                continue
            if step['type'] == 'DecordDecode':
                step = dict(type='RawFrameDecode')
        pipeline.append(step)
    cfg.train_dataloader.update(
        batch_size=args.stock_batch,
        num_workers=args.workers,
        persistent_workers=args.workers > 0)
    cfg.train_dataloader.dataset = dict(
        type='VideoDataset' if data == 'video' else 'RawframeDataset',
        ann_file=osp.join(root, f'train_{data}.txt'),
        data_prefix=dict(video=osp.join(root, 'videos'))
        if data == 'video' else dict(img=osp.join(root, 'rawframes')),
        pipeline=pipeline)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator',
                'test_dataloader', 'test_cfg', 'test_evaluator'):
        cfg[key] = None
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger.interval = 10
    cfg.train_pipeline = cfg.val_pipeline = cfg.test_pipeline = None
    return cfg


def with_multigrid(cfg: Config, options: dict) -> Config:
    """``cfg`` with the two-line change (plus ``options``)."""
    cfg = copy.deepcopy(cfg)
    cfg.custom_imports = dict(
        imports=['mmaction_multigrid'], allow_failed_imports=False)
    cfg.multi_grid = dict(cfg.get('multi_grid') or {}, **options)
    return cfg


def prepared_config(args, root: str, base: Config) -> Config:
    """Run ``prepare`` on the video config; load the config it writes."""
    src = osp.join(root, 'i3d_video_multigrid.py')
    with_multigrid(base, {}).dump(src)
    out = osp.join(root, 'prepared')
    start = time.perf_counter()
    subprocess.run([
        sys.executable, '-m', 'mmaction_multigrid', 'prepare', src, '--out',
        out, '--workers',
        str(max(1, args.workers))
    ],
                   check=True)
    print(f'prepare: {time.perf_counter() - start:.1f} s', flush=True)
    return Config.fromfile(osp.join(out, osp.basename(src)))


# ------------------------------------------------------------------ runs --
def shut_down_workers(runner: Runner) -> None:
    """Stop the persistent data workers of the train loader now."""
    loader = runner.train_loop.dataloader
    iterator = getattr(loader, '_iterator', None)
    if iterator is not None and hasattr(iterator, '_shutdown_workers'):
        iterator._shutdown_workers()


def run_once(cfg: Config, args, name: str, cycle: int) -> dict:
    """Build a Runner from ``cfg``, train until the recorder stops it."""
    cfg = copy.deepcopy(cfg)
    cfg.work_dir = osp.join(args.work_dir, name)
    cfg.experiment_name = name
    warmup = cycle * math.ceil(max(args.warmup, 1) / cycle)
    measure = cycle * math.ceil(max(args.measure, 1) / cycle)
    start = time.perf_counter()
    runner = Runner.from_cfg(cfg)
    recorder = Recorder(start, warmup, measure, cycle, args.replays)
    recorder.marks['built'] = time.perf_counter() - start
    runner.register_hook(recorder)
    try:
        runner.train()
    except Done:
        pass
    finally:
        shut_down_workers(runner)
    result = recorder.summary()
    del runner, recorder
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def stage_key(cfg: Config) -> str:
    """``frames x crop`` of a single-stage multigrid config's base shape."""
    shape = config_plan(cfg).schedule.batch_shapes(0)[-1]
    return f'{shape.clip_len}x{shape.size[0]}x{shape.size[1]}'


def schedule_epochs(cfg: Config) -> Dict[str, int]:
    """Epochs of the default schedule per base shape (``stage_key``)."""
    schedule = config_plan(cfg).schedule
    epochs: Dict[str, int] = {}
    for e in range(schedule.max_epochs):
        shape = schedule.batch_shapes(e)[-1]
        key = f'{shape.clip_len}x{shape.size[0]}x{shape.size[1]}'
        epochs[key] = epochs.get(key, 0) + 1
    return epochs


def whole_schedule(results: dict, name: str, weights: Dict[str, int],
                   stock_epochs: int, stock: str) -> dict:
    """Speedups of condition ``name`` over the stock condition ``stock``
    for the whole schedule, end to end and compute only."""
    runs = results[name]['stages']
    if set(weights) - set(runs) or stock not in results:
        return {}
    base = results[stock]['stages']['stock']
    out = {}
    for field in ('ms_per_clip', 'compute_ms_per_clip',
                  'timer_compute_ms_per_clip'):
        mg = sum(n * runs[k][field] for k, n in weights.items())
        out[field.replace('ms_per_clip', 'speedup')] = (
            stock_epochs * base[field] / mg)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--conditions',
        nargs='+',
        default=list(CONDITIONS),
        choices=list(CONDITIONS))
    parser.add_argument('--videos', type=int, default=16)
    parser.add_argument('--seconds', type=float, default=10.0)
    parser.add_argument('--workers', type=int, default=os.cpu_count() - 2)
    parser.add_argument('--stock-batch', type=int, default=8)
    parser.add_argument('--clip-len', type=int, default=32)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument(
        '--warmup', type=int, help='iterations (default: --workers)')
    parser.add_argument(
        '--measure', type=int, help='iterations (default: --workers)')
    parser.add_argument('--replays', type=int, default=3)
    parser.add_argument(
        '--stages', type=int, nargs='+', help='long-cycle stages to run')
    parser.add_argument(
        '--toy',
        action='store_true',
        help='a ResNet3d-18 with 8 base channels (CPU logic check)')
    parser.add_argument('--device', help='"cpu" hides the GPU')
    parser.add_argument(
        '--deadline', type=float, default=1e9, help='seconds for all runs')
    parser.add_argument('--root', default='/tmp/bench_e2e')
    parser.add_argument('--work-dir', default='/tmp/bench_e2e/work')
    parser.add_argument('--out', help='JSON file for the figures')
    args = parser.parse_args()
    begin = time.perf_counter()
    if args.device == 'cpu':
        os.environ['CUDA_VISIBLE_DEVICES'] = ''
    args.warmup = args.warmup or max(args.workers, 1)
    args.measure = args.measure or max(args.workers, 1)
    frames = round(30 * args.seconds)
    size = (256, 340) if not args.toy else (64, 86)
    longest = 16 * args.stock_batch  # the largest multigrid batch
    lines = longest * (args.warmup + args.measure + 4)
    start = time.perf_counter()
    make_data(args.root, args.videos, frames, size, lines,
              max(args.workers, 1))
    print(
        f'data: {args.videos} videos of {frames} frames at '
        f'{size[1]}x{size[0]}, {lines} annotation lines, '
        f'{time.perf_counter() - start:.1f} s',
        flush=True)
    if torch.cuda.is_available():  # CUDA and cuDNN start before any run
        conv = torch.nn.Conv3d(3, 8, 3).cuda()
        conv(torch.randn(1, 3, 4, 8, 8, device='cuda')).sum().backward()
        torch.cuda.synchronize()
    bases = {
        d: stock_config(args, args.root, d)
        for d in ('video', 'rawframes')
    }
    mg_default = with_multigrid(bases['video'], {})
    weights = schedule_epochs(mg_default)
    stock_epochs = config_plan(mg_default).schedule.stock_max_epochs
    ceiling = 1 / config_plan(mg_default).schedule.compute_ratio()
    results: Dict[str, dict] = {}
    lines: List[str] = []
    stages = args.stages or list(range(len(LONG_CYCLE)))
    for name in args.conditions:
        multigrid, data, options = CONDITIONS[name]
        if data == 'prepared':
            base = prepared_config(args, args.root, bases['video'])
        else:
            base = bases[data]
        results[name] = dict(stages={}, skipped=[])
        runs = [(None, base)] if not multigrid else [
            (j,
             with_multigrid(
                 base, dict(options, long_cycle_factors=(LONG_CYCLE[j], ))))
            for j in stages
        ]
        for j, cfg in runs:
            label = 'stock' if j is None else stage_key(cfg)
            if time.perf_counter() - begin > args.deadline:
                results[name]['skipped'].append(label)
                print(f'{name} {label}: skipped (deadline)', flush=True)
                continue
            cycle = 1 if j is None else len(
                config_plan(cfg).schedule.batch_shapes(0))
            result = run_once(cfg, args, f'{name}_{label}', cycle)
            results[name]['stages'][label] = result
            lines.append(
                f'{name:16s} {label:10s} ready {result["marks"]["ready"]:5.1f}'
                f' s | {result["ms_per_iter"]:7.1f} ms/iter | '
                f'{result["ms_per_clip"]:6.2f} ms/clip end to end, data wait '
                f'{100 * result["data_wait_share"]:3.0f}% | compute '
                f'{result["compute_ms_per_clip"]:6.2f} ms/clip (' + ', '.join(
                    f'{b}x{t}x{h}x{w} {ms:.1f} ms'
                    for b, t, h, w, ms in result['compute_ms_per_batch']) +
                ')')
            print(lines[-1], flush=True)
    summary = {}
    for name in results:
        if CONDITIONS[name][0]:
            summary[name] = {
                stock: whole_schedule(results, name, weights, stock_epochs,
                                      stock)
                for stock in ('stock-video', 'stock-rawframes')
            }
    print('\n' + '\n'.join(lines))
    print(f'\nWhole schedule ({stock_epochs} stock epochs; multigrid epochs '
          f'per stage {weights}; compute ceiling {ceiling:.2f}x):')
    for name, against in summary.items():
        for stock, s in against.items():
            if s:
                print(f'{name:16s} vs {stock:15s}: end to end '
                      f'{s["speedup"]:.2f}x, compute only '
                      f'{s["compute_speedup"]:.2f}x (timer '
                      f'{s["timer_compute_speedup"]:.2f}x)')
    if args.out:
        write_result(
            args.out,
            dict(
                figure='multigrid against stock end to end, per stage',
                setup=dict(
                    config=osp.basename(I3D),
                    videos=args.videos,
                    video=f'{size[1]}x{size[0]} H.264 libx264 defaults, '
                    f'{frames} frames at 30 fps',
                    workers=args.workers,
                    warmup=args.warmup,
                    measure=args.measure,
                    toy=args.toy),
                ceiling=ceiling,
                schedule_epochs=weights,
                stock_epochs=stock_epochs,
                conditions=results,
                whole_schedule=summary))


if __name__ == '__main__':
    main()
