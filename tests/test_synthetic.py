"""Tests of the synthetic data set generator (real files, real decoders)."""
import os
import os.path as osp

import cv2
import decord
import numpy as np
import pytest

from mmaction_multigrid.tools.synthetic import dataset_cfg, make_dataset

NUM_CLASSES = 4
PER_CLASS = 3
NUM_FRAMES = 24
SIZE = (96, 128)


def _read_ann(path):
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


@pytest.fixture(scope='module')
def video_set(tmp_path_factory):
    return make_dataset(
        str(tmp_path_factory.mktemp('video')),
        num_classes=NUM_CLASSES,
        videos_per_class=PER_CLASS,
        num_frames=NUM_FRAMES,
        size=SIZE,
        fmt='video',
        val_per_class=1,
        corrupt=2)


@pytest.fixture(scope='module')
def frame_set(tmp_path_factory):
    return make_dataset(
        str(tmp_path_factory.mktemp('rawframes')),
        num_classes=NUM_CLASSES,
        videos_per_class=PER_CLASS,
        num_frames=NUM_FRAMES,
        size=SIZE,
        fmt='rawframes',
        val_per_class=1,
        corrupt=1)


def _good(lines):
    return [line for line in lines if 'corrupt' not in line[0]]


def test_info_and_annotations(video_set, frame_set):
    for info, fmt, sub in ((video_set, 'video', 'videos'),
                           (frame_set, 'rawframes', 'rawframes')):
        assert set(info) == {
            'root', 'train_ann', 'val_ann', 'data_prefix', 'fmt', 'num_classes'
        }
        assert info['fmt'] == fmt and info['num_classes'] == NUM_CLASSES
        assert info['data_prefix'] == osp.join(info['root'], sub)
        train = _read_ann(info['train_ann'])
        val = _read_ann(info['val_ann'])
        assert len(_good(train)) == NUM_CLASSES * PER_CLASS
        assert len(val) == len(_good(val)) == NUM_CLASSES
        ncols = 2 if fmt == 'video' else 3
        for line in train + val:
            assert len(line) == ncols
            assert 0 <= int(line[-1]) < NUM_CLASSES
        labels = sorted(int(line[-1]) for line in _good(train))
        assert labels == sorted(list(range(NUM_CLASSES)) * PER_CLASS)


def test_videos_decode(video_set):
    lines = _good(_read_ann(video_set['train_ann']))
    lines += _read_ann(video_set['val_ann'])
    for name, _ in lines:
        assert name.endswith('.mp4')
        vr = decord.VideoReader(osp.join(video_set['data_prefix'], name))
        assert len(vr) == NUM_FRAMES
        assert vr[0].shape == (*SIZE, 3)
        assert round(vr.get_avg_fps()) == 25


def test_rawframes_match_annotation(frame_set):
    lines = _good(_read_ann(frame_set['train_ann']))
    lines += _read_ann(frame_set['val_ann'])
    for name, total, _ in lines:
        folder = osp.join(frame_set['data_prefix'], name)
        files = sorted(os.listdir(folder))
        assert int(total) == NUM_FRAMES
        assert files == [f'img_{i:05}.jpg' for i in range(1, NUM_FRAMES + 1)]
        assert cv2.imread(osp.join(folder, files[-1])).shape == (*SIZE, 3)


def _pipeline(rawframes):
    decode = [
        dict(type='RawFrameDecode')
    ] if rawframes else [dict(
        type='DecordInit'), dict(type='DecordDecode')]
    return [
        *decode[:-1],
        dict(type='SampleFrames', clip_len=8, frame_interval=2, num_clips=1),
        decode[-1],
        dict(type='Resize', scale=(-1, 64)),
        dict(type='CenterCrop', crop_size=56),
        dict(type='FormatShape', input_format='NCTHW'),
        dict(type='PackActionInputs'),
    ]


@pytest.mark.parametrize('rawframes', [False, True])
def test_mmaction_datasets(rawframes, video_set, frame_set):
    from mmaction.datasets import RawframeDataset, VideoDataset
    from mmaction.utils import register_all_modules
    register_all_modules()
    info = frame_set if rawframes else video_set
    cls = RawframeDataset if rawframes else VideoDataset
    for split, n in (('train', None), ('val', NUM_CLASSES)):
        cfg = dataset_cfg(info, _pipeline(rawframes), split)
        assert cfg.pop('type') == cls.__name__
        assert cfg['test_mode'] == (split == 'val')
        ds = cls(**cfg)
        assert len(ds) == (n or len(_read_ann(info['train_ann'])))
        for i in (0, len(ds) - 1 if split == 'val' else PER_CLASS):
            out = ds[i]
            assert tuple(out['inputs'].shape) == (1, 3, 8, 56, 56)
            sample = out['data_samples']
            gt = getattr(sample, 'gt_label', None)  # mmaction >= 1.2
            label = int(sample.gt_labels.item if gt is None else gt)
            assert label == ds.get_data_info(i)['label']
            assert 0 <= label < NUM_CLASSES
        if rawframes:
            assert ds.filename_tmpl == 'img_{:05}.jpg'


def _centroid_track(path):
    """Circular (wrap-aware) centroid of the bright pixels of every frame."""
    frames = decord.VideoReader(path).get_batch(list(range(NUM_FRAMES)))
    frames = frames.asnumpy()
    h, w = SIZE
    track = []
    for frame in frames:
        ys, xs = np.nonzero(frame.max(-1) > 170)
        assert len(xs) > 20  # the shape is always visible
        cx = np.angle(np.exp(2j * np.pi * xs / w).mean()) * w / (2 * np.pi)
        cy = np.angle(np.exp(2j * np.pi * ys / h).mean()) * h / (2 * np.pi)
        track.append((cx, cy))
    track = np.array(track)
    step = np.diff(track, axis=0)
    step = (step + [w / 2, h / 2]) % [w, h] - [w / 2, h / 2]
    return np.median(step, axis=0), frames[0]


def test_class_is_in_motion_not_appearance(video_set):
    by_class = {c: [] for c in range(NUM_CLASSES)}
    for name, label in _good(_read_ann(video_set['train_ann'])):
        path = osp.join(video_set['data_prefix'], name)
        by_class[int(label)].append(_centroid_track(path))

    for label, clips in by_class.items():
        for (vx, vy), _ in clips:
            if label == 0:  # horizontal, either way
                assert abs(vx) > 1.5 and abs(vy) < 0.5
            elif label == 1:  # down
                assert vy > 1.5 and abs(vx) < 0.5
            elif label == 2:  # up
                assert vy < -1.5 and abs(vx) < 0.5
            else:  # diagonal down
                assert vy > 1 and abs(vx) > 1
        # A single frame does not tell the class: appearance varies within
        # each class (mean colour of frame 0 and colour of the shape).
        first = np.stack([frame for _, frame in clips])
        assert first.reshape(len(clips), -1, 3).mean(1).std(0).max() > 1
        shape_colours = [frame[frame.max(-1) > 200].mean(0) for frame in first]
        assert np.ptp(np.stack(shape_colours), axis=0).max() > 20


def test_deterministic(tmp_path):
    kw = dict(num_classes=2, videos_per_class=1, num_frames=8, val_per_class=1)
    for fmt in ('video', 'rawframes'):
        a = make_dataset(str(tmp_path / f'a_{fmt}'), fmt=fmt, seed=3, **kw)
        b = make_dataset(str(tmp_path / f'b_{fmt}'), fmt=fmt, seed=3, **kw)
        c = make_dataset(str(tmp_path / f'c_{fmt}'), fmt=fmt, seed=4, **kw)
        first = []
        for info in (a, b, c):
            ann = _read_ann(info['train_ann'])
            path = osp.join(info['data_prefix'], ann[0][0])
            if fmt == 'video':
                frame = decord.VideoReader(path)[0].asnumpy()
            else:
                frame = cv2.imread(osp.join(path, 'img_00001.jpg'))
            first.append((ann, _read_ann(info['val_ann']), frame))
        assert first[0][:2] == first[1][:2] == first[2][:2]
        np.testing.assert_array_equal(first[0][2], first[1][2])
        assert not np.array_equal(first[0][2], first[2][2])


def test_corrupt_entries(video_set, frame_set):
    bad = [e for e in _read_ann(video_set['train_ann']) if 'corrupt' in e[0]]
    assert len(bad) == 2
    for name, label in bad:
        assert 0 <= int(label) < NUM_CLASSES
        with pytest.raises(Exception):
            decord.VideoReader(osp.join(video_set['data_prefix'], name))

    bad = [e for e in _read_ann(frame_set['train_ann']) if 'corrupt' in e[0]]
    assert len(bad) == 1
    name, total, _ = bad[0]
    folder = osp.join(frame_set['data_prefix'], name)
    assert int(total) == NUM_FRAMES
    assert len(os.listdir(folder)) < NUM_FRAMES
    assert cv2.imread(osp.join(folder, 'img_00001.jpg')) is None


def test_bad_arguments(tmp_path, video_set):
    with pytest.raises(ValueError):
        make_dataset(str(tmp_path), fmt='gif')
    with pytest.raises(ValueError):
        make_dataset(str(tmp_path), num_classes=0)
    with pytest.raises(ValueError):
        dataset_cfg(video_set, [], split='test')
