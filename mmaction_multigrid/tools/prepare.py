"""One-time preparation of a multigrid-friendly copy of a train set.

``python -m mmaction_multigrid prepare CONFIG --out DIR`` writes, for every
distinct train video (or rawframe folder), its frames as JPEG files at each
reduced short side that the multigrid shapes of CONFIG resize to (128 and 181
pixels for the stock I3D R50 schedule at 224), plus ``DIR/train_list.txt``
(the annotations without the samples that could not be read) and exactly one
config, ``DIR/<config name>.py``: CONFIG with the train set's annotation file
pointed at that list and ``multi_grid.prepared_copy = DIR``.

Small shapes then decode a few small JPEG frames instead of walking a long
H.264 group of pictures at full size; the default shape still reads the
source at full resolution.

Several processes or machines may write to the same ``DIR`` at once: every
sample is written to a temporary folder named after its host and process and
renamed when complete (a sample another writer finished first is kept and
the temporary copy discarded), and the shared files are replaced atomically.
A killed run resumes where it stopped and a second run writes nothing.
``--shard I/N`` converts every N-th distinct source only and writes no list
or config; a run without ``--shard`` writes them.
"""
import itertools
import json
import os
import os.path as osp
import re
import shutil
import socket
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import (Dict, Iterable, Iterator, List, NamedTuple, Optional,
                    Sequence, Tuple)

import cv2
import mmcv
import numpy as np
from mmengine.config import Config
from mmengine.utils import ProgressBar

from ..datasets.pipeline import decode_short_side, reshape_pipeline
from ..datasets.transforms import copy_folder
from ..datasets.walk import leaf_datasets
from ..datasets.wrapper import MANIFEST
from ..engine.convert import convert_config
from ..engine.plan import build_plan
from .config import ADD_MULTI_GRID, load_config

ANNOTATION = 'train_list.txt'
FRAME_TMPL = 'img_{:05}.jpg'
# Frames decoded per decord call while converting a video.
CHUNK = 64
# Suffix of the folder a sample is written to before its rename.
TEMP_SUFFIX = '.part'


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
    schedule = build_plan(convert_config(cfg)).schedule
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
    leaves = leaf_datasets(dataset)
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


class Unreadable(Exception):
    """A source that cannot be decoded: its sample is left out, the run
    goes on."""


def _decoded(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """``frames``, any error while decoding them raised as
    :class:`Unreadable`."""
    try:
        yield from frames
    except Exception as error:  # decoders raise many types
        raise Unreadable(f'{type(error).__name__}: {error}') from error


class SampleResult(NamedTuple):
    """What :func:`prepare_sample` did with one source.

    Attributes:
        source: The source file or folder.
        status: ``'written'`` (this process renamed at least one copy into
            place), ``'raced'`` (another writer finished every missing copy
            first; ours were discarded), ``'skipped'`` (all copies
            existed), ``'corrupt'`` (the source cannot be decoded) or
            ``'failed'`` (a copy cannot be written).
        error: What went wrong for ``'corrupt'`` and ``'failed'``, else
            ``''``.
        nbytes: Disk size of the copies this process wrote, kept or
            discarded. Defaults to 0.
    """
    source: str
    status: str
    error: str = ''
    nbytes: int = 0


def _host() -> str:
    """This machine's host name, dots replaced by ``_`` (so a temporary
    name splits unambiguously)."""
    return socket.gethostname().replace('.', '_')


def _temp_path(path: str, suffix: str) -> str:
    """This process's hidden temporary name for ``path``, next to it:
    ``.NAME.HOST-PID`` + ``suffix``, unique among concurrent writers."""
    return osp.join(
        osp.dirname(path),
        f'.{osp.basename(path)}.{_host()}-{os.getpid()}{suffix}')


def _left_by_dead_process(name: str, host: str) -> bool:
    """Whether ``name`` is a temporary sample folder that a process of
    ``host`` left behind when it was killed (that process no longer runs).

    Args:
        name: A file name.
        host: This machine's :func:`_host`; processes of other machines
            cannot be checked, so their folders never count as left behind.
    """
    match = re.fullmatch(
        r'\..+\.(?P<host>[^.]+)-(?P<pid>\d+)' + re.escape(TEMP_SUFFIX), name)
    if match is None or match['host'] != host:
        return False
    try:
        os.kill(int(match['pid']), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # running, as another user
        pass
    return False


def _remove_dead_temps(folders: Iterable[str]) -> None:
    """Remove the temporary sample folders in ``folders`` whose writer on
    this machine was killed, leaving those of running writers."""
    host = _host()
    for folder in folders:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            if _left_by_dead_process(name, host):
                shutil.rmtree(osp.join(folder, name), ignore_errors=True)


def _write_copies(task: dict, temps: Dict[int, str]) -> int:
    """Decode the source of ``task`` once and write every frame at each
    short side of ``temps`` into that side's folder.

    Args:
        task: As for :func:`prepare_sample`.
        temps: Folder to write per short side.

    Returns:
        int: Bytes written.

    Raises:
        Unreadable: if the source cannot be decoded or has no frames.
        OSError: if a frame cannot be written.
    """
    params = [cv2.IMWRITE_JPEG_QUALITY, int(task['quality'])]
    for temp in temps.values():
        # Only a killed process with this process's id wrote here.
        shutil.rmtree(temp, ignore_errors=True)
        os.makedirs(temp)
    if task['kind'] == 'video':
        frames = _video_frames(task['source'])
        names = (FRAME_TMPL.format(i) for i in itertools.count(1))
    else:
        frames = _rawframes(task['source'], task['names'])
        names = iter(task['names'])
    count = 0
    for frame, name in zip(_decoded(frames), names):
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        for side, temp in temps.items():
            size = _target_size(bgr.shape[:2], side)
            small = bgr if size == (bgr.shape[1], bgr.shape[0]) else (
                cv2.resize(bgr, size, interpolation=cv2.INTER_AREA))
            if not cv2.imwrite(osp.join(temp, name), small, params):
                raise OSError(f'cannot write {osp.join(temp, name)}')
        count += 1
    if count == 0:
        raise Unreadable('no frames')
    return sum(disk_bytes(temp) for temp in temps.values())


def _publish(temp: str, folder: str) -> bool:
    """Rename a finished temporary copy to its final ``folder``.

    Returns:
        bool: True if renamed; False if another writer finished ``folder``
        first (``temp`` is then left for the caller to remove).

    Raises:
        OSError: if the rename fails for another reason.
    """
    try:
        os.rename(temp, folder)
    except OSError:
        if osp.isdir(folder):
            return False
        raise
    return True


def prepare_sample(task: dict) -> SampleResult:
    """Write the copies of one sample that do not exist yet.

    Each copy goes to a temporary folder unique to this process and is
    renamed into place when complete; a copy that another writer finished
    meanwhile is kept and ours removed.

    Args:
        task: ``source`` (file or folder), ``kind`` (``'video'`` or
            ``'rawframes'``), ``names`` (frame file names of a rawframe
            source), ``outputs`` (copy folder per short side) and
            ``quality`` (JPEG quality).

    Returns:
        SampleResult: What was done; a write error is returned as
        ``'failed'``, not raised, so that the caller can stop the run with
        one message.
    """
    source = task['source']
    todo = {
        int(side): folder
        for side, folder in task['outputs'].items() if not osp.isdir(folder)
    }
    if not todo:
        return SampleResult(source, 'skipped')
    temps = {
        side: _temp_path(folder, TEMP_SUFFIX)
        for side, folder in todo.items()
    }
    try:
        nbytes = _write_copies(task, temps)
        kept = [_publish(temps[side], folder) for side, folder in todo.items()]
    except Unreadable as error:
        return SampleResult(source, 'corrupt', str(error))
    except OSError as error:
        return SampleResult(source, 'failed', str(error))
    finally:
        for temp in temps.values():
            shutil.rmtree(temp, ignore_errors=True)
    return SampleResult(source, 'written' if any(kept) else 'raced', '',
                        nbytes)


def _tasks(cfg: Config, out: str, sides: Sequence[int],
           quality: int) -> Tuple[List[dict], List[str], List[str]]:
    """The train samples' annotation lines and the work to do for them.

    Returns:
        tuple[list[dict], list[str], list[str]]: One task per distinct
        source, sorted by source path (an annotation file may list a source
        many times; a rawframe folder listed with several frame ranges gets
        their union); the annotation lines; and the source of each line.
    """
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
    tasks: Dict[str, dict] = {}
    sources = []
    for info in infos:
        source = info['filename'] if kind == 'video' else info['frame_dir']
        sources.append(source)
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
        task = tasks.setdefault(
            source,
            dict(
                source=source,
                kind=kind,
                names=names,
                quality=quality,
                outputs={
                    side: osp.join(copy_folder(out, side), rel)
                    for side in sides
                }))
        if names is not None:
            task['names'] = list(dict.fromkeys(task['names'] + names))
    return [tasks[s] for s in sorted(tasks)], lines, sources


def _write_if_changed(path: str, text: str) -> None:
    """Write ``text`` to ``path`` unless it already holds it, atomically
    (through a temporary file of this process), so that concurrent writers
    of the same text never leave a partial file."""
    if osp.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return
    temp = _temp_path(path, '.tmp')
    with open(temp, 'w') as f:
        f.write(text)
    os.replace(temp, path)


def disk_bytes(folder: str) -> int:
    """Bytes of the files under ``folder``."""
    return sum(
        osp.getsize(osp.join(d, name)) for d, _, names in os.walk(folder)
        for name in names)


def parse_shard(text: str) -> Tuple[int, int]:
    """``(i, n)`` of ``--shard i/n``.

    Args:
        text: ``I/N``: this is machine I of N, counted from 0.

    Returns:
        tuple[int, int]: ``(i, n)``.

    Raises:
        ValueError: unless ``text`` is ``I/N`` with ``0 <= I < N``.
    """
    match = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', text)
    if match is None or int(match[1]) >= int(match[2]):
        raise ValueError(
            f'prepare: --shard must be I/N with 0 <= I < N (this machine '
            f'is number I of N, counted from 0: --shard 0/4 to --shard 3/4 '
            f'on 4 machines), got {text!r}.')
    return int(match[1]), int(match[2])


def _collect(results: Iterable[SampleResult],
             total: int) -> List[SampleResult]:
    """The results of the samples, shown on a progress bar.

    Raises:
        OSError: at the first sample that could not be written.
    """
    bar = ProgressBar(total)
    collected = []
    try:
        for result in results:
            if result.status == 'failed':
                raise OSError(
                    f'prepare: cannot write the copy of {result.source}: '
                    f'{result.error}. Fix the cause (disk space, '
                    'permissions, a file where the copy goes) and run the '
                    'same command again: finished samples are kept.')
            collected.append(result)
            bar.update()
    finally:
        bar.file.write('\n')
    return collected


def _convert(tasks: Sequence[dict], workers: int) -> List[SampleResult]:
    """Run :func:`prepare_sample` on every task in ``workers`` processes.

    Raises:
        OSError: at the first sample that could not be written, or when a
            process died; samples not started yet are dropped and those in
            progress finish first, so no process is killed while writing.
    """
    if workers == 1:
        return _collect(map(prepare_sample, tasks), len(tasks))
    executor = ProcessPoolExecutor(workers)
    try:
        futures = [executor.submit(prepare_sample, task) for task in tasks]
        return _collect((future.result() for future in as_completed(futures)),
                        len(tasks))
    except BrokenProcessPool as error:
        raise OSError(
            'prepare: a worker process died while converting (killed, e.g. '
            'out of memory); run the same command again, with fewer '
            '--workers if memory ran out: finished samples are kept.'
        ) from error
    finally:
        executor.shutdown(cancel_futures=True)


def _duration(seconds: float) -> str:
    """``seconds`` in s, min or h, whichever reads best."""
    if seconds < 120:
        return f'{seconds:.0f} s'
    if seconds < 7200:
        return f'{seconds / 60:.0f} min'
    return f'{seconds / 3600:.1f} h'


def rate_text(report: Dict[str, object]) -> str:
    """Time and disk of this run per source and per 1,000 sources.

    Args:
        report: As returned by :func:`prepare`.

    Returns:
        str: e.g. ``prepare: 12 videos in 23.1 s, 8.3 MB per video: 32 min
        and 8.3 GB per 1,000 videos with 8 processes on this machine``.
    """
    one, many = (('video', 'videos') if report['kind'] == 'video' else
                 ('frame folder', 'frame folders'))
    count = report['converted']
    if not count:
        return (f'prepare: no {one} converted in this run, so no time or '
                'disk figures')
    seconds, workers = report['seconds'], report['workers']
    mb = report['bytes'] / count / 1e6
    return (f'prepare: {count} {many} in {seconds:.1f} s, {mb:.3g} MB per '
            f'{one}: {_duration(seconds / count * 1000)} and {mb:.3g} GB per '
            f'1,000 {many} with {workers} '
            f'{"process" if workers == 1 else "processes"} on this machine')


def prepare(config: str,
            out: str,
            workers: Optional[int] = None,
            quality: int = 90,
            options: Optional[dict] = None,
            shard: Optional[str] = None) -> Dict[str, object]:
    """Write the prepared copy of a config's train set and its config.

    Args:
        config: Config file with ``multi_grid``.
        out: Output folder.
        workers: Processes; all cores when None.
        quality: JPEG quality of the copies (1-100). Defaults to 90.
        options: ``--cfg-options`` merged into the config.
        shard: ``'I/N'``: convert only the distinct sources at positions
            I, I + N, ... of the sorted list, and write no annotation list,
            manifest or config (a run without ``shard`` writes them, and
            converts whatever the shards left). None converts all and
            writes them. Defaults to None.

    Returns:
        dict: ``short_sides``, ``kind`` (``'video'`` or ``'rawframes'``),
        ``samples`` (annotation lines), ``sources`` (distinct sources this
        run handled), ``workers``, ``written``, ``raced`` (converted, but
        another writer finished first), ``skipped`` (already done),
        ``corrupt`` (list of ``(source, error)``), ``converted`` (sources
        decoded and written in this run), ``seconds`` (time converting),
        ``bytes`` (disk size of what this run converted) and ``config``
        (the written config file; None for a shard).

    Raises:
        ValueError: on a config the copy cannot serve, or a bad ``shard``.
        OSError: if a copy cannot be written.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f'prepare: --quality must be in [1, 100], got '
                         f'{quality}.')
    index, count = parse_shard(shard) if shard is not None else (0, 1)
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
    tasks, lines, sources = _tasks(cfg, out, sides, quality)
    mine = tasks[index::count]
    workers = max(1, min(workers or os.cpu_count() or 1, len(mine)))
    in_shard = (f', shard {index}/{count}: {len(mine)}'
                if shard is not None else '')
    print(f'prepare: {len(lines)} samples, {len(tasks)} distinct sources'
          f'{in_shard}, copies at short sides {sides}, {workers} processes')
    folders = {
        osp.dirname(folder)
        for task in mine
        for folder in task['outputs'].values()
    }
    _remove_dead_temps(folders)
    start = time.time()
    try:
        results = _convert(mine, workers)
    finally:
        _remove_dead_temps(folders)
    seconds = time.time() - start
    corrupt = [(r.source, r.error) for r in results if r.status == 'corrupt']
    converted = [r for r in results if r.status in ('written', 'raced')]
    leaf = train_leaf(cfg)
    kind = 'video' if leaf['type'] == 'VideoDataset' else 'rawframes'
    report = dict(
        short_sides=sides,
        kind=kind,
        samples=len(lines),
        sources=len(mine),
        workers=workers,
        written=sum(r.status == 'written' for r in results),
        raced=sum(r.status == 'raced' for r in results),
        skipped=sum(r.status == 'skipped' for r in results),
        corrupt=corrupt,
        converted=len(converted),
        seconds=seconds,
        bytes=sum(r.nbytes for r in converted),
        config=None)
    if shard is not None:
        return report
    bad = {source for source, _ in corrupt}
    kept = [line for line, src in zip(lines, sources) if src not in bad]
    _write_if_changed(
        osp.join(out, ANNOTATION), ''.join(line + '\n' for line in kept))
    _write_if_changed(
        osp.join(out, MANIFEST),
        json.dumps(
            dict(short_sides=sides, source=kind, quality=quality), indent=1) +
        '\n')
    leaf['ann_file'] = osp.join(out, ANNOTATION)
    cfg['multi_grid']['prepared_copy'] = out
    _write_if_changed(osp.join(out, name), cfg.pretty_text)
    report['config'] = osp.join(out, name)
    return report
