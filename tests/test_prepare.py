"""``python -m mmaction_multigrid prepare``: the reduced-resolution copy of
a train set, its annotation file and config, which copy each multigrid
shape reads, and several writers (processes, runs, shards) on one copy."""
import collections
import os
import os.path as osp
import socket
import subprocess
import sys

import cv2
import decord
import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmaction_multigrid.tools.prepare as prepare_module
from mmaction_multigrid.datasets.wrapper import MultiGridDataset, ShapedIndex
from mmaction_multigrid.tools.cli import DEMO_CONFIG, main
from mmaction_multigrid.tools.prepare import prepare
from mmaction_multigrid.tools.synthetic import dataset_cfg, make_dataset

init_default_scope('mmaction')
# The demo schedule (16 frames, 64 crops after Resize(-1, 72)): shapes of
# 32 and 45 pixels resize to short sides 72 * 32 / 64 = 36 and
# round(72 * 45 / 64) = 51.
SIDES = [36, 51]
SOURCE = (96, 128)  # generated frames (height, width)


def write_config(path: str, data: dict) -> str:
    """The demo config on ``data``, its train pipeline stopped before
    formatting so samples show their decoded frames."""
    cfg = Config.fromfile(DEMO_CONFIG)
    pipeline = [
        t for t in cfg.train_pipeline
        if t['type'] not in ('Flip', 'FormatShape', 'PackActionInputs')
    ]
    cfg.train_dataloader.dataset = dataset_cfg(data, pipeline)
    cfg.dump(path)
    return path


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_dataset(
        str(tmp_path_factory.mktemp('src')),
        videos_per_class=2,
        num_frames=40,
        size=SOURCE,
        corrupt=2)


@pytest.fixture(scope='module')
def prepared(tmp_path_factory, data):
    root = tmp_path_factory.mktemp('prep')
    config = write_config(str(root / 'mg.py'), data)
    out = str(root / 'copy')
    return dict(
        config=config,
        out=out,
        report=prepare(config, out, workers=2),
        data=data)


def frame_files(folder: str) -> list:
    return sorted(os.listdir(folder))


def test_copies_at_the_shapes_short_sides(prepared):
    report, out = prepared['report'], prepared['out']
    assert report['short_sides'] == SIDES
    assert report['written'] == 8 and report['skipped'] == 0
    assert report['bytes'] > 0
    for side in SIDES:
        folder = osp.join(out, f'short{side}', 'train', '02_001')
        names = frame_files(folder)
        assert names == [f'img_{i:05}.jpg' for i in range(1, 41)]
        h = side
        w = int(round(SOURCE[1] * side / SOURCE[0]))
        assert cv2.imread(osp.join(folder, names[0])).shape == (h, w, 3)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255**2 / ((a.astype(float) - b)**2).mean())


def test_content_kept_at_the_lower_resolution(prepared):
    """Each copied frame is the source frame downscaled (PSNR > 30 dB);
    another video's frames are not (PSNR < 20 dB)."""
    prefix = prepared['data']['data_prefix']
    reader = decord.VideoReader(osp.join(prefix, 'train', '01_000.mp4'))
    source = reader.get_batch(list(range(len(reader)))).asnumpy()
    for side in SIDES:
        folder = osp.join(prepared['out'], f'short{side}', 'train')
        for index in (0, 17, 39):
            copy = cv2.imread(
                osp.join(folder, '01_000', f'img_{index + 1:05}.jpg'))
            other = cv2.imread(
                osp.join(folder, '03_001', f'img_{index + 1:05}.jpg'))
            small = cv2.resize(
                source[index], copy.shape[1::-1], interpolation=cv2.INTER_AREA)
            small = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
            assert psnr(small, copy) > 30
            assert psnr(small, other) < 20


def test_annotation_and_config(prepared):
    """One config in the folder: the input with the train annotations (all
    but the corrupt samples, labels unchanged) and the copy."""
    out, data = prepared['out'], prepared['data']
    with open(data['train_ann']) as f:
        source = f.read().splitlines()
    with open(osp.join(out, 'train_list.txt')) as f:
        kept = f.read().splitlines()
    assert kept == [line for line in source if 'corrupt' not in line]
    assert len(kept) == 8
    assert [f for f in os.listdir(out) if f.endswith('.py')] == ['mg.py']
    cfg = Config.fromfile(osp.join(out, 'mg.py'))
    assert cfg.train_dataloader.dataset.ann_file == osp.join(
        out, 'train_list.txt')
    assert cfg.multi_grid.prepared_copy == out
    assert cfg.val_dataloader == Config.fromfile(
        prepared['config']).val_dataloader


def test_corrupt_source_reported_and_skipped(prepared):
    corrupt = sorted(
        osp.basename(src) for src, _ in prepared['report']['corrupt'])
    assert corrupt == ['corrupt_000.mp4', 'corrupt_001.mp4']
    for side in SIDES:
        assert not [
            name for name in os.listdir(
                osp.join(prepared['out'], f'short{side}', 'train'))
            if 'corrupt' in name
        ]


def mtimes(folder: str) -> dict:
    return {
        osp.join(d, n): os.stat(osp.join(d, n)).st_mtime_ns
        for d, _, names in os.walk(folder)
        for n in names
    }


HOST = socket.gethostname().replace('.', '_')


def temp_folder(out: str, sample: str, host: str, pid: int) -> str:
    """The temporary 36-pixel folder of ``train/sample`` that process
    ``pid`` of ``host`` writes."""
    return osp.join(out, 'short36', 'train', f'.{sample}.{host}-{pid}.part')


def dead_pid() -> int:
    """The id of a process that has exited."""
    proc = subprocess.Popen(['true'])
    proc.wait()
    return proc.pid


def test_idempotent_and_resumable(tmp_path, data, capsys):
    """A second run writes nothing (same files, same mtimes); after a
    simulated kill (a sample's half-written temporary folder, its finished
    folder missing) only that sample is written, and the killed process's
    temporary folder is gone; those of writers that may still run (on this
    machine or another) are left."""
    config = write_config(str(tmp_path / 'mg.py'), data)
    out = str(tmp_path / 'copy')
    assert main(['prepare', config, '--out', out, '--workers', '1']) == 0
    printed = capsys.readouterr().out
    assert 'skipped unreadable sample' in printed
    assert 'corrupt_000.mp4' in printed and 'corrupt_001.mp4' in printed
    before = mtimes(out)
    again = prepare(config, out, workers=1)
    assert again['written'] == 0 and again['skipped'] == 8
    assert mtimes(out) == before

    folder = osp.join(out, 'short36', 'train', '00_001')
    for name in os.listdir(folder):
        os.remove(osp.join(folder, name))
    os.rmdir(folder)
    part = temp_folder(out, '00_001', HOST, dead_pid())
    os.makedirs(part)
    with open(osp.join(part, 'img_00001.jpg'), 'wb') as f:
        f.write(b'half')
    # Temporary folders of writers that may still run: one on this machine
    # (the pytest parent process), one on another machine.
    running = [
        temp_folder(out, '00_000', HOST, os.getppid()),
        temp_folder(out, '00_000', 'other-machine', dead_pid())
    ]
    for live in running:
        os.makedirs(live)
    resumed = prepare(config, out, workers=1)
    assert resumed['written'] == 1 and resumed['skipped'] == 7
    assert not osp.exists(part)
    assert all(osp.isdir(live) for live in running)
    for live in running:
        os.rmdir(live)
    assert len(frame_files(folder)) == 40
    after = mtimes(out)
    changed = {p for p in after if before.get(p) != after[p]}
    assert changed == {osp.join(folder, n) for n in frame_files(folder)}
    # The other copy of that sample already existed: left as it was.
    assert all(not p.startswith(osp.join(out, 'short51', 'train', '00_001'))
               for p in changed)


def test_each_shape_reads_the_smallest_sufficient_copy(prepared):
    """Shapes of 32 and 45 pixels read the 36 and 51 pixel copies; the
    default shape and plain indices read the source video."""
    out = prepared['out']
    cfg = Config.fromfile(osp.join(out, 'mg.py'))
    dataset = MultiGridDataset(cfg.train_dataloader.dataset, prepared_copy=out)
    width = {side: int(round(SOURCE[1] * side / SOURCE[0])) for side in SIDES}
    for size, side in ((32, 36), (45, 51)):
        results = dataset[ShapedIndex(0, 4, 4, size, size)]
        assert results['frame_dir'] == osp.join(out, f'short{side}', 'train',
                                                '00_000')
        assert results['original_shape'] == (side, width[side])
        assert np.stack(results['imgs']).shape == (4, size, size, 3)
    for idx in (ShapedIndex(0, 16, 1, 64, 64), 0):
        results = dataset[idx]
        assert 'frame_dir' not in results
        assert results['filename'].endswith(osp.join('train', '00_000.mp4'))
        assert results['original_shape'] == SOURCE


def test_copy_frames_match_the_source_frame_indices(prepared):
    """A shape reading the copy decodes the frames the sampler drew: each
    output frame matches the source frame of its index (downscaled and
    centre-cropped the same way) better than the frames next to it."""
    out = prepared['out']
    cfg = Config.fromfile(osp.join(out, 'mg.py')).train_dataloader.dataset
    cfg.pipeline = [
        dict(type='DecordInit'),
        dict(type='SampleFrames', clip_len=16, frame_interval=1),
        dict(type='DecordDecode'),
        dict(type='Resize', scale=(-1, 72)),
        dict(type='CenterCrop', crop_size=64)
    ]
    dataset = MultiGridDataset(cfg, prepared_copy=out)
    np.random.seed(1)
    results = dataset[ShapedIndex(2, 4, 4, 45, 45)]
    assert results['frame_dir'].startswith(osp.join(out, 'short51'))
    reader = decord.VideoReader(results['filename'])
    source = reader.get_batch(list(range(len(reader)))).asnumpy()
    h, w = 51, 68
    top, left = (h - 45) // 2, (w - 45) // 2
    for k, img in zip(results['frame_inds'], results['imgs']):
        scores = {
            j:
            psnr(
                cv2.resize(source[j], (w, h),
                           interpolation=cv2.INTER_AREA)[top:top + 45,
                                                         left:left + 45], img)
            for j in (k - 1, k, k + 1) if 0 <= j < len(source)
        }
        assert max(scores, key=scores.get) == k, scores
        assert scores[k] > 30


def test_rawframe_source(tmp_path):
    """A rawframe train set: copies keep the frame file names; a folder with
    a broken frame is reported and skipped; small shapes read the copy."""
    data = make_dataset(
        str(tmp_path / 'src'),
        videos_per_class=1,
        num_frames=40,
        size=SOURCE,
        fmt='rawframes',
        corrupt=1)
    config = write_config(str(tmp_path / 'mg.py'), data)
    cfg = Config.fromfile(config)
    cfg.train_dataloader.dataset.pipeline = [
        dict(type='RawFrameDecode') if t['type'] == 'DecordDecode' else t
        for t in cfg.train_dataloader.dataset.pipeline
        if t['type'] != 'DecordInit'
    ]
    cfg.dump(config)
    out = str(tmp_path / 'copy')
    report = prepare(config, out, workers=1)
    assert [osp.basename(s) for s, _ in report['corrupt']] == ['corrupt_000']
    assert report['written'] == 4
    prepared_cfg = Config.fromfile(osp.join(out, 'mg.py'))
    dataset = MultiGridDataset(
        prepared_cfg.train_dataloader.dataset, prepared_copy=out)
    results = dataset[ShapedIndex(1, 8, 2, 32, 32)]
    assert results['frame_dir'] == osp.join(out, 'short36', 'train', '01_000')
    assert results['original_shape'] == (36, 48)
    assert dataset[1]['original_shape'] == SOURCE


def test_unfinished_copy_is_a_config_error(tmp_path, data):
    cfg = dataset_cfg(data, Config.fromfile(DEMO_CONFIG).train_pipeline)
    with pytest.raises(ValueError, match='multi_grid.prepared_copy'):
        MultiGridDataset(cfg, prepared_copy=str(tmp_path))


def hidden(out: str) -> list:
    """Temporary files and folders (hidden names) under ``out``."""
    return [
        osp.join(d, name) for d, folders, files in os.walk(out)
        for name in folders + files if name.startswith('.')
    ]


def test_repeated_lines_decode_each_source_once(tmp_path, monkeypatch):
    """An annotation file listing each of 12 videos and a corrupt one 20
    times, 8 processes: each source is decoded once, the list keeps every
    readable line with its repeats, in order, and no temporary file or
    folder is left."""
    data = make_dataset(
        str(tmp_path / 'src'),
        videos_per_class=3,
        num_frames=40,
        size=SOURCE,
        corrupt=1)
    with open(data['train_ann']) as f:
        once = f.read().splitlines()
    repeated = [line for _ in range(20) for line in once]
    with open(data['train_ann'], 'w') as f:
        f.write(''.join(line + '\n' for line in repeated))
    log = str(tmp_path / 'decoded.txt')
    decode = prepare_module._video_frames

    def logged(path):
        with open(log, 'a') as f:  # one short append per call: atomic
            f.write(path + '\n')
        return decode(path)

    # The pool forks its processes from this one: they decode through
    # ``logged`` too (and still decode).
    monkeypatch.setattr(prepare_module, '_video_frames', logged)
    config = write_config(str(tmp_path / 'mg.py'), data)
    out = str(tmp_path / 'copy')
    report = prepare(config, out, workers=8)
    assert report['workers'] == 8 and report['samples'] == 260
    assert report['written'] == 12 and len(report['corrupt']) == 1
    with open(log) as f:
        decoded = collections.Counter(f.read().splitlines())
    assert sorted(osp.relpath(path, data['data_prefix'])
                  for path in decoded) == sorted(line.split()[0]
                                                 for line in once)
    assert set(decoded.values()) == {1}
    with open(osp.join(out, 'train_list.txt')) as f:
        assert f.read().splitlines() == [
            line for line in repeated if 'corrupt' not in line
        ]
    for side in SIDES:
        assert len(os.listdir(osp.join(out, f'short{side}', 'train'))) == 12
    assert hidden(out) == []


def test_copy_another_writer_finished_meanwhile_is_kept(
        tmp_path, data, monkeypatch):
    """While this process decodes a video, another writer finishes its
    copies: the sample counts as raced, the other writer's copies stay as
    they are and ours are removed."""
    source = osp.join(data['data_prefix'], 'train', '00_000.mp4')
    outputs = {
        side: str(tmp_path / f'short{side}' / 'train' / '00_000')
        for side in SIDES
    }
    decode = prepare_module._video_frames

    def other_writer_finishes(path):
        for folder in outputs.values():
            os.makedirs(folder)
            with open(osp.join(folder, 'img_00001.jpg'), 'wb') as f:
                f.write(b'theirs')
        return decode(path)

    monkeypatch.setattr(prepare_module, '_video_frames', other_writer_finishes)
    result = prepare_module.prepare_sample(
        dict(
            source=source,
            kind='video',
            names=None,
            quality=90,
            outputs=outputs))
    assert result.status == 'raced' and result.nbytes > 0
    for folder in outputs.values():
        assert os.listdir(folder) == ['img_00001.jpg']
        with open(osp.join(folder, 'img_00001.jpg'), 'rb') as f:
            assert f.read() == b'theirs'
    assert hidden(str(tmp_path)) == []


def files(out: str) -> dict:
    """Content of each file under ``out`` but the config, by relative
    path."""
    found = {}
    for d, _, names in os.walk(out):
        for name in names:
            path = osp.join(d, name)
            if not name.endswith('.py'):
                with open(path, 'rb') as f:
                    found[osp.relpath(path, out)] = f.read()
    return found


def start_prepare(config: str, out: str, *options: str) -> subprocess.Popen:
    """``python -m mmaction_multigrid prepare CONFIG --out OUT OPTIONS``
    in a new process."""
    return subprocess.Popen([
        sys.executable, '-m', 'mmaction_multigrid', 'prepare', config, '--out',
        out, *options
    ],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            text=True)


def test_concurrent_runs_on_one_folder(tmp_path, prepared):
    """Two ``prepare`` processes started together on the same folder both
    succeed, and the folder holds the same files, byte for byte, as one
    run writes, and no temporary file or folder."""
    out = str(tmp_path / 'copy')
    procs = [
        start_prepare(prepared['config'], out, '--workers', '2')
        for _ in range(2)
    ]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        assert f'config: {osp.join(out, "mg.py")}' in stdout
    assert files(out) == files(prepared['out'])
    assert hidden(out) == []


def test_shards_then_final_run(tmp_path, data, capsys):
    """``--shard 0/2`` and ``--shard 1/2`` write every other distinct
    source (sorted) and no list or config; the final run without
    ``--shard`` converts nothing more and writes the list and config."""
    config = write_config(str(tmp_path / 'mg.py'), data)
    out = str(tmp_path / 'copy')

    def samples(side):
        return sorted(os.listdir(osp.join(out, f'short{side}', 'train')))

    def run(shard):
        return main([
            'prepare', config, '--out', out, '--workers', '1', '--shard', shard
        ])

    assert run('0/2') == 0
    assert 'run the same command without --shard' in capsys.readouterr().out
    for side in SIDES:
        assert samples(side) == ['00_000', '01_000', '02_000', '03_000']
    assert sorted(os.listdir(out)) == ['short36', 'short51']
    assert run('1/2') == 0
    for side in SIDES:
        assert samples(side) == [
            f'{label:02}_{i:03}' for label in range(4) for i in range(2)
        ]
    assert sorted(os.listdir(out)) == ['short36', 'short51']
    before = mtimes(out)
    final = prepare(config, out, workers=1)
    assert final['written'] == 0 and final['skipped'] == 8
    assert len(final['corrupt']) == 2
    assert mtimes(out) == {**mtimes(out), **before}
    with open(data['train_ann']) as f:
        source = f.read().splitlines()
    with open(osp.join(out, 'train_list.txt')) as f:
        assert f.read().splitlines() == [
            line for line in source if 'corrupt' not in line
        ]
    assert Config.fromfile(final['config']).multi_grid.prepared_copy == out


def test_bad_shard_is_an_error(tmp_path, data, capsys):
    config = write_config(str(tmp_path / 'mg.py'), data)
    for shard in ('2/2', '0/0', '1', 'a/4'):
        assert main([
            'prepare', config, '--out',
            str(tmp_path / 'copy'), '--shard', shard
        ]) == 2
        assert '--shard must be I/N with 0 <= I < N' in capsys.readouterr().err
    assert not osp.exists(tmp_path / 'copy')


def test_write_failure_is_one_error_line(tmp_path):
    """A copy that cannot be written (a file where its folder goes) stops
    the run: exit status 2, one error line naming the sample and what to
    do, no traceback, no temporary folder, no list or config. (No corrupt
    sources here: decoders print their own lines about those.)"""
    data = make_dataset(
        str(tmp_path / 'src'), videos_per_class=2, num_frames=40, size=SOURCE)
    config = write_config(str(tmp_path / 'mg.py'), data)
    out = tmp_path / 'copy'
    (out / 'short36' / 'train').mkdir(parents=True)
    (out / 'short36' / 'train' / '02_001').write_text('in the way')
    proc = start_prepare(config, str(out), '--workers', '4')
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith('error: prepare: cannot write the copy of ')
    assert osp.join('train', '02_001.mp4') in stderr
    assert 'run the same command again' in stderr
    assert 'Traceback' not in stdout + stderr
    assert hidden(str(out)) == []
    assert sorted(os.listdir(out)) == ['short36', 'short51']
