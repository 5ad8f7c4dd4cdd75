"""One-time preparation of a multigrid-friendly copy of a train set.

``python -m mmaction_multigrid prepare CONFIG --out DIR`` writes, for every
train video (or rawframe folder), its frames as JPEG files at each reduced
short side that the multigrid shapes of CONFIG resize to (128 and 181 pixels
for the stock I3D R50 schedule at 224), plus ``DIR/train_list.txt`` (the
annotations without the samples that could not be read) and exactly one
config, ``DIR/<config name>.py``: CONFIG with the train set's annotation file
pointed at that list and ``multi_grid.prepared_copy = DIR``.

Small shapes then decode a few small JPEG frames instead of walking a long
H.264 group of pictures at full size; the default shape still reads the
source at full resolution. Every sample is written to a temporary folder and
renamed when complete, so a killed run resumes where it stopped and a second
run writes nothing.
"""
import itertools
import json
import os
import os.path as osp
import shutil
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import mmcv
import numpy as np
from mmengine.config import Config
from mmengine.utils import track_parallel_progress, track_progress

from .convert import _leaf_datasets, convert_config
from .datasets import MANIFEST
from .pipeline import decode_short_side, reshape_pipeline
from .schedule import MultiGridSchedule
from .transforms import copy_folder

ANNOTATION = 'train_list.txt'
FRAME_TMPL = 'img_{:05}.jpg'
# Frames decoded per decord call while converting a video.
CHUNK = 64


def copy_short_sides(cfg: Config) -> List[int]:
    """Short sides of the copies the multigrid shapes of ``cfg`` read.

    Args:
        cfg: A config with ``multi_grid``.

    Returns:
        list[int]: The distinct short sides, smaller than the stock
        pipeline's, that the shapes' first resize asks for, ascending.

    Raises:
        ValueError: if the train pipeline does not start its spatial
            transforms with ``Resize(scale=(-1, SHORT))``.
    """
    loader = convert_config(cfg)['train_dataloader']
    schedule = MultiGridSchedule(
        batch_size=loader['batch_size'], **loader['batch_sampler']['schedule'])
    pipeline = train_leaf(cfg)['pipeline']
    stock = decode_short_side(pipeline)
    if stock is None:
        raise ValueError(
            'prepare: the train pipeline has no Resize(scale=(-1, SHORT)) '
            'right after decoding, so the copies have no short side to '
            'match; add one (as the stock configs do).')
    sides = set()
    for epoch in range(schedule.max_epochs):
        for shape in schedule.batch_shapes(epoch):
            side = decode_short_side(
                reshape_pipeline(pipeline, shape.clip_len,
                                 shape.frame_interval, shape.size))
            if side < stock:
                sides.add(side)
    return sorted(sides)


def train_leaf(cfg: Config) -> dict:
    """The train dataset config (a single ``VideoDataset`` or
    ``RawframeDataset``).

    Raises:
        ValueError: for wrapped or other dataset types.
    """
    dataset = cfg['train_dataloader']['dataset']
    leaves = _leaf_datasets(dataset)
    if len(leaves) != 1 or leaves[0] is not dataset or dataset.get(
            'type') not in ('VideoDataset', 'RawframeDataset'):
        raise ValueError(
            'prepare: train_dataloader.dataset must be one VideoDataset or '
            f'RawframeDataset, got {dataset.get("type")}; prepare each '
            'part of a wrapped dataset with its own config.')
    return dataset


def _target_size(size: Tuple[int, int], short_side: int) -> Tuple[int, int]:
    """``(w, h)`` of a ``(h, w)`` frame with its short side at
    ``short_side``, as ``Resize(scale=(-1, short_side))`` computes it; the
    frame's own size when it is not larger (never upsampled)."""
    h, w = size
    if min(h, w) <= short_side:
        return w, h
    return mmcv.rescale_size((w, h), (np.inf, short_side))


def _video_frames(path: str):
    """Yields the RGB frames of a video, as ``DecordDecode`` decodes them."""
    import decord
    reader = decord.VideoReader(path, num_threads=1)
    total = len(reader)
    if total == 0:
        raise ValueError('no frames')
    for start in range(0, total, CHUNK):
        batch = reader.get_batch(
            list(range(start, min(start + CHUNK, total)))).asnumpy()
        yield from batch


def _rawframes(folder: str, names: Sequence[str]):
    """Yields the RGB frames of a rawframe folder, in ``names`` order."""
    for name in names:
        img = cv2.imread(osp.join(folder, name), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f'cannot read {name}')
        yield cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def prepare_sample(task: dict) -> Tuple[str, str, str]:
    """Write the copies of one sample that do not exist yet.

    Args:
        task: ``source`` (file or folder), ``kind`` (``'video'`` or
            ``'rawframes'``), ``names`` (frame file names of a rawframe
            source), ``outputs`` (copy folder per short side) and
            ``quality`` (JPEG quality).

    Returns:
        tuple[str, str, str]: the source, ``'done'``, ``'skipped'`` (all
        copies existed) or ``'corrupt'``, and the error message.
    """
    todo = {
        int(side): folder
        for side, folder in task['outputs'].items() if not osp.isdir(folder)
    }
    if not todo:
        return task['source'], 'skipped', ''
    parts = {
        side:
        osp.join(osp.dirname(folder), '.' + osp.basename(folder) + '.part')
        for side, folder in todo.items()
    }
    params = [cv2.IMWRITE_JPEG_QUALITY, int(task['quality'])]
    try:
        for part in parts.values():
            shutil.rmtree(part, ignore_errors=True)  # a killed run's
            os.makedirs(part)
        if task['kind'] == 'video':
            frames = _video_frames(task['source'])
            names = (FRAME_TMPL.format(i) for i in itertools.count(1))
        else:
            frames = _rawframes(task['source'], task['names'])
            names = iter(task['names'])
        count = 0
        for frame, name in zip(frames, names):
            bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            for side, part in parts.items():
                size = _target_size(bgr.shape[:2], side)
                small = bgr if size == (bgr.shape[1], bgr.shape[0]) else (
                    cv2.resize(bgr, size, interpolation=cv2.INTER_AREA))
                if not cv2.imwrite(osp.join(part, name), small, params):
                    raise OSError(f'cannot write {osp.join(part, name)}')
            count += 1
        if count == 0:
            raise ValueError('no frames')
    except Exception as error:  # decoders raise many types
        for part in parts.values():
            shutil.rmtree(part, ignore_errors=True)
        return task['source'], 'corrupt', f'{type(error).__name__}: {error}'
    for side, part in parts.items():
        os.rename(part, todo[side])
    return task['source'], 'done', ''


def _tasks(cfg: Config, out: str, sides: Sequence[int],
           quality: int) -> Tuple[List[dict], List[str]]:
    """One task per train sample, and the annotation line of each."""
    from mmaction.registry import DATASETS
    from mmengine.registry import init_default_scope
    init_default_scope('mmaction')
    leaf = dict(train_leaf(cfg), pipeline=[], test_mode=False)
    dataset = DATASETS.build(leaf)
    with open(dataset.ann_file) as f:
        lines = [line.rstrip('\n') for line in f if line.strip()]
    infos = dataset.load_data_list()
    if len(lines) != len(infos):
        raise ValueError(f'prepare: {dataset.ann_file} has {len(lines)} '
                         f'lines but the dataset reads {len(infos)} samples.')
    kind = 'video' if leaf['type'] == 'VideoDataset' else 'rawframes'
    root = dataset.data_prefix['video' if kind == 'video' else 'img']
    tasks = []
    for info in infos:
        source = info['filename'] if kind == 'video' else info['frame_dir']
        rel = osp.relpath(source, root)
        if kind == 'video':
            rel, names = osp.splitext(rel)[0], None
        else:
            start = info.get('offset', 0) + dataset.start_index
            names = [
                dataset.filename_tmpl.format(i)
                for i in range(start, start + info['total_frames'])
            ]
        if rel.startswith('..'):
            raise ValueError(f'prepare: {source} is outside the data prefix '
                             f'{root}.')
        tasks.append(
            dict(
                source=source,
                kind=kind,
                names=names,
                quality=quality,
                outputs={
                    side: osp.join(copy_folder(out, side), rel)
                    for side in sides
                }))
    return tasks, lines


def _write_if_changed(path: str, text: str) -> None:
    """Write ``text`` to ``path`` unless it already holds it."""
    if osp.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return
    with open(path + '.part', 'w') as f:
        f.write(text)
    os.replace(path + '.part', path)


def disk_bytes(folder: str) -> int:
    """Bytes of the files under ``folder``."""
    return sum(
        osp.getsize(osp.join(d, name)) for d, _, names in os.walk(folder)
        for name in names)


def prepare(config: str,
            out: str,
            workers: Optional[int] = None,
            quality: int = 90,
            options: Optional[dict] = None) -> Dict[str, object]:
    """Write the prepared copy of a config's train set and its config.

    Args:
        config: Config file with ``multi_grid``.
        out: Output folder.
        workers: Processes; all cores when None.
        quality: JPEG quality of the copies (1-100). Defaults to 90.
        options: ``--cfg-options`` merged into the config.

    Returns:
        dict: ``short_sides``, ``samples``, ``written``, ``skipped``,
        ``corrupt`` (list of ``(source, error)``), ``seconds``, ``bytes``
        (disk size of the copies) and ``config`` (the written config file).

    Raises:
        ValueError: on a config the copy cannot serve.
    """
    from .cli import ADD_MULTI_GRID, load_config  # cli imports this module
    if not 1 <= quality <= 100:
        raise ValueError(f'prepare: --quality must be in [1, 100], got '
                         f'{quality}.')
    start = time.time()
    cfg = load_config(config, options)
    if cfg.get('multi_grid') is None:
        raise ValueError(f'the config has no `multi_grid`; {ADD_MULTI_GRID}.')
    sides = copy_short_sides(cfg)
    if not sides:
        raise ValueError('prepare: no multigrid shape resizes below the '
                         'stock size; there is nothing to prepare.')
    out = osp.abspath(out)
    os.makedirs(out, exist_ok=True)
    others = [f for f in os.listdir(out) if f.endswith('.py')]
    name = osp.basename(config)
    if [f for f in others if f != name]:
        raise ValueError(f'prepare: {out} already holds the config(s) '
                         f'{others} of another run; use an empty folder.')
    tasks, lines = _tasks(cfg, out, sides, quality)
    workers = workers or os.cpu_count() or 1
    print(f'prepare: {len(tasks)} samples, copies at short sides {sides}, '
          f'{workers} processes')
    if workers > 1:
        results = track_parallel_progress(prepare_sample, tasks, workers)
    else:
        results = track_progress(prepare_sample, tasks)
    corrupt = [(src, err) for src, status, err in results
               if status == 'corrupt']
    bad = {src for src, _ in corrupt}
    kept = [
        line for line, task in zip(lines, tasks) if task['source'] not in bad
    ]
    _write_if_changed(
        osp.join(out, ANNOTATION), ''.join(line + '\n' for line in kept))
    leaf = train_leaf(cfg)
    _write_if_changed(
        osp.join(out, MANIFEST),
        json.dumps(
            dict(
                short_sides=sides,
                source='video'
                if leaf['type'] == 'VideoDataset' else 'rawframes',
                quality=quality),
            indent=1) + '\n')
    leaf['ann_file'] = osp.join(out, ANNOTATION)
    cfg['multi_grid']['prepared_copy'] = out
    _write_if_changed(osp.join(out, name), cfg.pretty_text)
    return dict(
        short_sides=sides,
        samples=len(tasks),
        written=sum(s == 'done' for _, s, _ in results),
        skipped=sum(s == 'skipped' for _, s, _ in results),
        corrupt=corrupt,
        seconds=time.time() - start,
        bytes=sum(disk_bytes(copy_folder(out, s)) for s in sides),
        config=osp.join(out, name))
