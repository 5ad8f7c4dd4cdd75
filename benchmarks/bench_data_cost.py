"""Data-loading CPU of the whole I3D multigrid schedule against stock.

Generates Kinetics-like data (340x256, 30 fps, 10 s, H.264 through PyAV's
libx264 at its defaults: a keyframe every 250 frames; the same frames as
JPEG rawframes), reads it through the stock I3D R50 config's own train
pipeline (32x2 clips, 224 crops; ``RawFrameDecode`` for rawframes) with
``multi_grid = dict()``, and measures the CPU time per clip (one process,
``time.process_time``, the pipeline from the file to the packed tensor; the
least of a few interleaved rounds, so that every cell sees the same load) at
every batch shape of the multigrid schedule and at the stock shape, for:

- ``today``: the package before this data path (fixed span, full decode);
- ``defaults``: no preparation, the defaults (``reduced_decode=True``);
- ``levers``: no preparation: ``temporal_sampling='random'`` and
  ``reduced_decode=True``;
- ``prepared``: the copy of ``python -m mmaction_multigrid prepare``
  (JPEG frames at the small shapes' short sides), with ``reduced_decode``;
- ``prepared+random``: the same with ``temporal_sampling='random'``.

It prints ms per clip per shape, then per stage the CPU cores per GPU that
keep a GPU fed at given per-iteration times (default: the H200 fp32 times
of the README, 37.0 ms for a stock batch and for every multigrid batch),
the one-time preparation cost, and last the ratio of the data CPU of the
whole multigrid schedule to that of the whole stock schedule (clips per
shape x ms per clip summed over the schedule; multigrid reads 1.5x the
clips).

    python benchmarks/bench_data_cost.py [--videos 6] [--clips 6] [--rounds 3]
"""
import argparse
import glob
import itertools
import os
import os.path as osp
import shutil
import sys
import time
from typing import Dict, List, Optional, Tuple

import av
import cv2
import mmaction
import numpy as np
from mmengine.config import Config

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, osp.dirname(HERE))

from mmaction_multigrid.datasets.wrapper import MultiGridDataset, ShapedIndex
from mmaction_multigrid.tools.cli import config_plan
from mmaction_multigrid.tools.measure import time_data
from mmaction_multigrid.tools.prepare import disk_bytes, prepare

I3D = osp.join(
    osp.dirname(mmaction.__file__), '.mim', 'configs', 'recognition', 'i3d',
    'i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-'
    'rgb.py')
SIZE = (256, 340)  # (height, width), as the Kinetics re-encodes
FPS = 30
FRAMES = 300
VARIANTS = {
    'today': dict(temporal_sampling='span', reduced_decode=False),
    'defaults': dict(temporal_sampling='span', reduced_decode=True),
    'levers': dict(temporal_sampling='random', reduced_decode=True),
    'prepared': dict(temporal_sampling='span', reduced_decode=True),
    'prepared+random': dict(temporal_sampling='random', reduced_decode=True),
}


def kinetics_like_frames(seed: int,
                         num_frames: int = FRAMES,
                         size: Tuple[int, int] = SIZE):
    """Yields BGR frames: a textured scene panning, a textured patch moving
    across it and a bright disc on a curved path (smooth, detailed motion
    that H.264 encodes at a Kinetics-like bitrate)."""
    rng = np.random.default_rng(seed)
    h, w = size
    coarse = rng.uniform(0, 255, (h // 8, w // 8, 3)).astype(np.float32)
    scene = cv2.resize(coarse, (2 * w, 2 * h), interpolation=cv2.INTER_CUBIC)

    def grain():
        return cv2.GaussianBlur(
            rng.uniform(-60, 60, (2 * h, 2 * w, 3)).astype(np.float32), (0, 0),
            0.8)

    scene = np.clip(scene + grain(), 0, 255)
    patch = grain()
    v_scene, v_patch = rng.uniform(-2, 2, 2), rng.uniform(-3, 3, 2)
    phase = rng.uniform(0, 2 * np.pi)
    for t in range(num_frames):
        x, y = (int(w / 2 + v_scene[0] * t) % w,
                int(h / 2 + v_scene[1] * t) % h)
        frame = scene[y:y + h, x:x + w].copy()
        x, y = (int(w / 2 + v_patch[0] * t) % w,
                int(h / 2 + v_patch[1] * t) % h)
        frame[h // 4:h // 4 + h // 2, w // 4:w // 4 +
              w // 2] = np.clip(128 + 1.5 * patch[y:y + h // 2, x:x + w // 2],
                                0, 255)
        frame = frame.astype(np.uint8)
        centre = (int(w / 2 + 0.3 * w * np.sin(t / 20 + phase)),
                  int(h / 2 + 0.3 * h * np.cos(t / 27 + phase)))
        cv2.circle(frame, centre, h // 8, (255, 200, 50), -1, cv2.LINE_AA)
        yield frame


def write_h264(path: str,
               frames,
               codec: str = 'libx264',
               options: Optional[dict] = None) -> None:
    """A video through PyAV: H.264 by libx264 at its defaults (keyint 250)
    unless ``options`` say otherwise, or another ``codec``."""
    frames = iter(frames)
    first = next(frames)
    with av.open(path, 'w') as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = 'yuvj420p' if codec == 'mjpeg' else 'yuv420p'
        stream.options = dict(options or {})
        for frame in itertools.chain([first], frames):
            container.mux(
                stream.encode(
                    av.VideoFrame.from_ndarray(frame, format='bgr24')))
        container.mux(stream.encode())


def make_data(root: str, videos: int) -> None:
    """Write ``videos`` clips as mp4 and as JPEG rawframes (kept if there)."""
    lists = {'video': [], 'rawframes': []}
    for i in range(videos):
        name = f'train/v{i:04d}'
        label = i % 4
        mp4 = osp.join(root, 'videos', name + '.mp4')
        folder = osp.join(root, 'rawframes', name)
        if not (osp.isfile(mp4) and osp.isdir(folder)):
            os.makedirs(osp.dirname(mp4), exist_ok=True)
            os.makedirs(folder, exist_ok=True)
            frames = list(kinetics_like_frames(i))
            write_h264(mp4, frames)
            for k, frame in enumerate(frames, 1):
                cv2.imwrite(osp.join(folder, f'img_{k:05}.jpg'), frame)
        lists['video'].append(f'{name}.mp4 {label}')
        lists['rawframes'].append(f'{name} {FRAMES} {label}')
    for fmt, lines in lists.items():
        with open(osp.join(root, f'train_{fmt}.txt'), 'w') as f:
            f.write(''.join(line + '\n' for line in lines))


def i3d_config(root: str, fmt: str) -> Config:
    """The stock I3D R50 config with multigrid, reading the generated data."""
    cfg = Config.fromfile(I3D)
    cfg.custom_imports = dict(
        imports=['mmaction_multigrid'], allow_failed_imports=False)
    cfg.multi_grid = dict()
    dataset = cfg.train_dataloader.dataset
    dataset.ann_file = osp.join(root, f'train_{fmt}.txt')
    if fmt == 'video':
        dataset.data_prefix = dict(video=osp.join(root, 'videos'))
    else:
        dataset.type = 'RawframeDataset'
        dataset.data_prefix = dict(img=osp.join(root, 'rawframes'))
        dataset.pipeline = [
            dict(type='RawFrameDecode') if t['type'] == 'DecordDecode' else t
            for t in dataset.pipeline if t['type'] != 'DecordInit'
        ]
    return cfg


def schedule_weights(schedule) -> List[Dict[Tuple, float]]:
    """Per epoch: the fraction of its clips read at each batch shape."""
    weights = []
    for epoch in range(schedule.max_epochs):
        shapes = schedule.batch_shapes(epoch)
        total = sum(s.batch_size for s in shapes)
        epoch_w: Dict[Tuple, float] = {}
        for s in shapes:
            key = (s.clip_len, s.frame_interval) + tuple(s.size)
            epoch_w[key] = epoch_w.get(key, 0) + s.batch_size / total
        weights.append(epoch_w)
    return weights


def schedule_cpu(weights, ms: Dict[Tuple, float]) -> float:
    """Data CPU of the schedule in clip-epochs x ms (per sample)."""
    return sum(w * ms[key] for epoch_w in weights
               for key, w in epoch_w.items())


# Encodings of the same frames at half size (170x128) that a prepared copy
# could use: (codec, libx264/mjpeg options, file suffix).
FORMATS = {
    'H.264, keyint 250 (source)': ('libx264', {}, None),
    'H.264, keyint 8': ('libx264', {
        'g': '8'
    }, None),
    'H.264, keyint 8, 170x128': ('libx264', {
        'g': '8'
    }, (170, 128)),
    'H.264 all-intra, 170x128': ('libx264', {
        'g': '1'
    }, (170, 128)),
    'MJPEG, 170x128': ('mjpeg', {
        'q:v': '3'
    }, (170, 128)),
    'JPEG frames, 170x128': (None, None, (170, 128)),
}
DECODERS = (('decord', 'DecordInit', 'DecordDecode'),
            ('PyAV', 'PyAVInit', 'PyAVDecode'), ('OpenCV', 'OpenCVInit',
                                                 'OpenCVDecode'))


def clip_indices(total: int, clip_len: int, interval: int,
                 seed: int) -> List[int]:
    """Frame indices of a training clip, offset drawn as ``SampleFrames``."""
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, total - clip_len * interval + 1))
    return [start + i * interval for i in range(clip_len)]


def lever_tables(root: str, videos: int, rounds: int) -> None:
    """Decode-only CPU per clip of other encodings, and of other decoders
    through MMAction2's own transforms."""
    import decord
    from mmaction.registry import TRANSFORMS
    from mmengine.dataset import Compose
    folder = osp.join(root, 'formats')
    names = range(min(videos, 3))
    sizes = {}
    for j, (name, (codec, options, size)) in enumerate(FORMATS.items(), 1):
        sizes[name] = 0
        for i in names:
            path = osp.join(folder, f'{i}_{j}')
            frames = (
                f if size is None else cv2.resize(
                    f, size, interpolation=cv2.INTER_AREA)
                for f in kinetics_like_frames(i))
            if codec is None:
                if not osp.isdir(path):
                    os.makedirs(path)
                    for k, f in enumerate(frames, 1):
                        cv2.imwrite(
                            osp.join(path, f'img_{k:05}.jpg'), f,
                            [cv2.IMWRITE_JPEG_QUALITY, 90])
            elif not osp.isfile(path + '.mkv'):
                os.makedirs(folder, exist_ok=True)
                write_h264(path + '.mkv', frames, codec, options)
            sizes[name] += disk_bytes(path) if codec is None else (
                osp.getsize(path + '.mkv'))
    shapes = ((32, 2), (16, 4), (8, 8))
    best: Dict[Tuple, float] = {}
    for _ in range(rounds):
        for j, (name, (codec, _, _)) in enumerate(FORMATS.items(), 1):
            for t, r in shapes:
                start = time.process_time()
                for i in names:
                    path = osp.join(folder, f'{i}_{j}')
                    for k in range(3):
                        inds = clip_indices(FRAMES, t, r, k)
                        if codec is None:
                            files = sorted(glob.glob(path + '/*.jpg'))
                            [cv2.imread(files[n]) for n in inds]
                        else:
                            decord.VideoReader(
                                path + '.mkv',
                                num_threads=1).get_batch(inds).asnumpy()
                ms = (time.process_time() - start) / (3 * len(names)) * 1e3
                best[name, t] = min(best.get((name, t), ms), ms)
        for name, init, decode in DECODERS:
            for t, r in shapes:
                pipeline = Compose([
                    TRANSFORMS.build(c) for c in
                    (dict(type=init),
                     dict(type='SampleFrames', clip_len=t, frame_interval=r),
                     dict(type=decode))
                ])
                start = time.process_time()
                for i in names:
                    for k in range(3):
                        np.random.seed(k)
                        pipeline(
                            dict(
                                filename=osp.join(root, 'videos', 'train',
                                                  f'v{i:04d}.mp4'),
                                start_index=0,
                                modality='RGB'))
                ms = (time.process_time() - start) / (3 * len(names)) * 1e3
                best[name, t] = min(best.get((name, t), ms), ms)
    print('\n### levers: decode-only CPU ms per clip (decord one thread, '
          'or cv2.imread; least of interleaved rounds)\n')
    print('| encoding of the same frames | 32 x 2 | 16 x 4 | 8 x 8 | MB per '
          '10 s video |')
    print('|---|---|---|---|---|')
    for name in FORMATS:
        print(f'| {name} | ' + ' | '.join(f'{best[name, t]:.1f}'
                                          for t, _ in shapes) +
              f' | {sizes[name] / len(names) / 1e6:.2f} |')
    print('\n| decoder (MMAction2 transforms, source H.264) | 32 x 2 | '
          '16 x 4 | 8 x 8 |')
    print('|---|---|---|---|')
    for name, _, _ in DECODERS:
        print(f'| {name} | ' + ' | '.join(f'{best[name, t]:.1f}'
                                          for t, _ in shapes) + ' |')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--videos', type=int, default=6, help='generated videos (default 6)')
    parser.add_argument(
        '--clips',
        type=int,
        default=6,
        help='clips timed per shape and variant (default 6)')
    parser.add_argument(
        '--rounds',
        type=int,
        default=3,
        help='rounds over all cells, each cell keeping its '
        'least CPU time (default 3)')
    parser.add_argument('--data', nargs='+', default=['video', 'rawframes'])
    parser.add_argument(
        '--variants',
        nargs='+',
        default=list(VARIANTS),
        choices=list(VARIANTS))
    parser.add_argument(
        '--stock-ms',
        type=float,
        default=37.0,
        help='GPU ms per stock iteration (default: H200 '
        'fp32, README)')
    parser.add_argument(
        '--multigrid-ms',
        type=float,
        default=37.0,
        help='GPU ms per multigrid iteration, every shape '
        '(default 37.0; README: 37.5-40.8 on the H200)')
    parser.add_argument(
        '--workers',
        type=int,
        default=None,
        help='processes of the preparation (default: all)')
    parser.add_argument(
        '--levers',
        action='store_true',
        help='also time other encodings (keyframe '
        'interval, all-intra, MJPEG, JPEG frames) and '
        'decoders (decord, PyAV, OpenCV)')
    parser.add_argument('--work-dir', default='work_dirs/bench_data_cost')
    args = parser.parse_args()
    cv2.setNumThreads(1)
    from mmengine.registry import init_default_scope
    init_default_scope('mmaction')
    root = osp.join(args.work_dir, 'data')
    start = time.time()
    make_data(root, args.videos)
    print(f'data: {args.videos} videos of {FRAMES} frames '
          f'{SIZE[1]}x{SIZE[0]} ({time.time() - start:.0f} s; mp4 '
          f'{disk_bytes(osp.join(root, "videos")) / args.videos / 1e6:.2f} '
          f'MB/video, rawframes '
          f'{disk_bytes(osp.join(root, "rawframes")) / args.videos / 1e6:.2f}'
          f' MB/video); load average {os.getloadavg()[0]:.1f} '
          f'on {os.cpu_count()} cores')
    if args.levers:
        lever_tables(root, args.videos, args.rounds)
    results = {}
    for fmt in args.data:
        cfg = i3d_config(root, fmt)
        path = osp.join(args.work_dir, f'i3d_{fmt}.py')
        cfg.dump(path)
        out = osp.join(args.work_dir, f'prepared_{fmt}')
        shutil.rmtree(out, ignore_errors=True)
        report = prepare(path, out, args.workers)
        print(f'{fmt}: prepare: {report["seconds"]:.1f} s for '
              f'{report["samples"]} videos '
              f'({report["seconds"] / report["samples"]:.2f} s/video with '
              f'{args.workers or os.cpu_count()} processes), copies at short '
              f'sides {report["short_sides"]}: '
              f'{report["bytes"] / report["samples"] / 1e6:.2f} MB/video')
        schedule = config_plan(cfg).schedule
        weights = schedule_weights(schedule)
        keys = sorted({k
                       for w in weights
                       for k in w},
                      key=lambda k: (k[0] * k[2] * k[3], k))
        datasets = {}
        for name in args.variants:
            options = dict(VARIANTS[name])
            if name.startswith('prepared'):
                options['prepared_copy'] = out
            datasets[name] = MultiGridDataset(cfg.train_dataloader.dataset,
                                              **options)
        cells = [('stock', None)] + [(name, key) for name in args.variants
                                     for key in keys]
        best = {}
        for _ in range(args.rounds):  # interleaved: same contention
            for name, key in cells:
                dataset = datasets[args.variants[0] if key is None else name]
                value = time_data(
                    dataset, None if key is None else ShapedIndex(0, *key),
                    args.clips)
                best[name, key] = min(best.get((name, key), value), value)
        ms = {
            name: {
                key: best[name, key]
                for key in keys
            }
            for name in args.variants
        }
        ms['stock'] = best['stock', None]
        results[fmt] = dict(
            ms=ms,
            weights=weights,
            schedule=schedule,
            keys=keys,
            report=report)
        names = list(args.variants)
        print(f'\n### {fmt}: CPU ms per clip (one process; least of '
              f'{args.rounds} interleaved rounds of {args.clips} clips)\n')
        print('| shape (frames x interval, size) | ' + ' | '.join(names) +
              ' |')
        print('|---|' + '---|' * len(names))
        print(f'| stock 32 x 2, 224 | {ms["stock"]:.1f} |' + ' |' *
              (len(names) - 1))
        for key in keys:
            print(f'| {key[0]} x {key[1]}, {key[2]} | ' +
                  ' | '.join(f'{ms[n][key]:.1f}' for n in names) + ' |')
        last = names[-1]
        print(f'\n{fmt}, {last}: per stage, CPU cores per GPU to keep up '
              f'with {args.multigrid_ms} ms per multigrid iteration (stock '
              f'{8 * ms["stock"] / args.stock_ms:.1f} cores at '
              f'{args.stock_ms} ms)\n')
        print('| stage | epochs | shapes (batch x frames x size) | ms/clip '
              '(clip-weighted) | cores per GPU (max over the cycle) |')
        print('|---|---|---|---|---|')
        for row in schedule.describe():
            shapes = schedule.batch_shapes(row['begin'])
            mean = sum(w * ms[last][key]
                       for key, w in weights[row['begin']].items())
            cores = max(
                s.batch_size *
                ms[last][(s.clip_len, s.frame_interval) + tuple(s.size)] /
                args.multigrid_ms for s in shapes)
            print(f'| {row["stage"]} | {row["begin"]}-{row["end"]} | ' +
                  ', '.join(f'{s.batch_size}x{s.clip_len}x{s.size[0]}'
                            for s in shapes) +
                  f' | {mean:.1f} | {cores:.1f} |')
    print('\n### data CPU of the whole multigrid schedule / stock schedule '
          '(compute ratio 0.30)\n')
    for fmt, res in results.items():
        stock_total = res['schedule'].stock_max_epochs * res['ms']['stock']
        for name in args.variants:
            ratio = schedule_cpu(res['weights'], res['ms'][name]) / (
                stock_total)
            print(f'{fmt:9s} {name:16s} {ratio:.2f}')
        print(f'{fmt:9s} stock on the prepared copy: reads the source at '
              'full resolution, as stock (1.00)')
    both = {'video', 'rawframes'} <= set(results)
    if both and 'prepared' in args.variants:
        video, frames = results['video'], results['rawframes']
        name = args.variants[-1]
        ratio = schedule_cpu(video['weights'], video['ms'][name]) / (
            video['schedule'].stock_max_epochs * frames['ms']['stock'])
        print(f'video     {name} against stock on the videos converted to '
              f'full-size JPEG frames ({frames["ms"]["stock"]:.1f} ms/clip, '
              f'the rawframes data): {ratio:.2f}')


if __name__ == '__main__':
    main()
