"""The data-path transforms: random temporal sampling and reduced-size JPEG
decoding, alone and as MultiGridDataset puts them into shape pipelines."""
import os.path as osp

import cv2
import numpy as np
import pytest
from mmaction.registry import TRANSFORMS
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope

from mmaction_multigrid import MultiGridOptions
from mmaction_multigrid.datasets.pipeline import (random_interval,
                                                  reduced_decode)
from mmaction_multigrid.datasets.transforms import (RandomIntervalSampleFrames,
                                                    jpeg_size,
                                                    reduction_factor)
from mmaction_multigrid.datasets.wrapper import MultiGridDataset, ShapedIndex
from mmaction_multigrid.engine.convert import convert_config
from mmaction_multigrid.tools.synthetic import dataset_cfg

init_default_scope('mmaction')


def intervals(sampler, draws: int, total: int = 400) -> np.ndarray:
    """Frame interval of each of ``draws`` clips sampled by ``sampler``."""
    found = []
    for _ in range(draws):
        inds = sampler(dict(total_frames=total, start_index=0))['frame_inds']
        steps = set(np.diff(inds).tolist())
        assert len(steps) == 1, steps  # one interval per clip, no wrap
        found.append(steps.pop())
    return np.array(found)


def test_random_interval_is_uniform_over_the_integers():
    """Intervals of t=8 clips out of T=32 at r=2: uniform on {2, ..., 8}
    (chi-square, 6 degrees of freedom, p = 0.001 critical value 22.46)."""
    np.random.seed(0)
    sampler = RandomIntervalSampleFrames(clip_len=8, interval_range=(2, 8))
    draws = 3500
    found = intervals(sampler, draws)
    counts = np.array([(found == k).sum() for k in range(2, 9)])
    assert counts.sum() == draws  # nothing outside [2, 8]
    expected = draws / 7
    chi2 = ((counts - expected)**2 / expected).sum()
    assert chi2 < 22.46, counts


def test_random_interval_follows_the_global_seed():
    sampler = RandomIntervalSampleFrames(clip_len=4, interval_range=(1, 4))
    np.random.seed(3)
    first = intervals(sampler, 50)
    np.random.seed(3)
    assert (intervals(sampler, 50) == first).all()
    assert len(set(first.tolist())) == 4


def test_random_interval_rejects_a_bad_range():
    with pytest.raises(ValueError, match='interval_range'):
        RandomIntervalSampleFrames(clip_len=4, interval_range=(3, 2))


def stock_pipeline(fmt: str) -> list:
    """16 x 2 clips, Resize(-1, 48), 40 crops; rawframe decode at 1."""
    sampler = dict(
        type='SampleFrames', clip_len=16, frame_interval=2, num_clips=1)
    spatial = [
        dict(type='Resize', scale=(-1, 48)),
        dict(type='CenterCrop', crop_size=40)
    ]
    if fmt == 'video':
        return [dict(type='DecordInit'), sampler,
                dict(type='DecordDecode')] + spatial
    return [sampler, dict(type='RawFrameDecode')] + spatial


def test_random_interval_rewrite_keeps_the_stock_shape():
    stock = stock_pipeline('video')
    assert random_interval(stock, 2, 16) == stock  # t == T keeps r
    small = [dict(t) for t in stock]
    small[1].update(clip_len=4, frame_interval=8)
    sampler = random_interval(small, 2, 16)[1]
    assert sampler['type'] == 'RandomIntervalSampleFrames'
    assert sampler['interval_range'] == (2, 8)
    assert 'frame_interval' not in sampler


@pytest.mark.parametrize('mode, expected', [('span', {8}),
                                            ('random', set(range(2, 9)))])
def test_dataset_draws_intervals_per_clip(videos, mode, expected):
    """Through MultiGridDataset: a 4-frame shape (stock 16 x 2) samples at
    interval 8 with 'span', at every interval of [2, 8] with 'random'; the
    stock shape keeps interval 2 either way."""
    dataset = MultiGridDataset(
        dataset_cfg(videos, stock_pipeline('video')), temporal_sampling=mode)
    np.random.seed(0)
    seen = set()
    for k in range(60):
        inds = dataset[ShapedIndex(k % len(dataset), 4, 8, 28,
                                   28)]['frame_inds']
        seen |= set(np.diff(inds).tolist())
    assert seen == expected
    assert set(np.diff(dataset[0]['frame_inds']).tolist()) == {2}


@pytest.mark.parametrize('progressive', [False, True])
def test_jpeg_size_reads_the_header(tmp_path, progressive):
    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    path = str(tmp_path / 'x.jpg')
    cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    with open(path, 'rb') as f:
        assert jpeg_size(f.read()) == cv2.imread(path).shape[:2] == (37, 53)
    with pytest.raises(ValueError):
        jpeg_size(b'\x89PNG....')


@pytest.mark.parametrize('size', [(256, 340), (255, 341), (100, 77)])
def test_reduction_factor_never_upsamples(tmp_path, size):
    """The factor chosen is the largest whose decoded frame (as libjpeg
    makes it) is at least the target in both sides."""
    path = str(tmp_path / 'x.jpg')
    cv2.imwrite(path, np.zeros(size + (3, ), np.uint8))
    flags = {
        1: cv2.IMREAD_COLOR,
        2: cv2.IMREAD_REDUCED_COLOR_2,
        4: cv2.IMREAD_REDUCED_COLOR_4,
        8: cv2.IMREAD_REDUCED_COLOR_8
    }
    decoded = {
        f: cv2.imread(path, flag).shape[:2]
        for f, flag in flags.items()
    }
    for target_h in range(1, size[0] + 1, 7):
        target = (target_h, int(round(target_h * size[1] / size[0])))
        fits = [
            f for f, (h, w) in decoded.items()
            if h >= target[0] and w >= target[1]
        ]
        assert reduction_factor(size, target) == max(fits)


def test_reduced_decode_matches_the_stock_frames(rawframes):
    """A shape whose first resize halves the frames: the reduced decode
    gives the stock pipeline's crop within JPEG tolerance, at the same size;
    frames are decoded at half size, never below the resize's output."""
    stock = stock_pipeline('rawframes')
    small = [dict(t) for t in stock]
    small[2] = dict(type='Resize', scale=(-1, 24))
    small[3] = dict(type='CenterCrop', crop_size=20)
    rewritten = reduced_decode(small)
    assert rewritten[1]['type'] == 'ReducedRawFrameDecode'
    assert reduced_decode(stock)[1]['type'] == 'ReducedRawFrameDecode'
    cfg = dataset_cfg(rawframes, stock)
    info = dict(
        frame_dir=osp.join(cfg['data_prefix']['img'], 'train', '01_000'),
        total_frames=40,
        filename_tmpl=cfg['filename_tmpl'],
        modality='RGB',
        start_index=1,
        offset=0)
    outputs = {}
    for name, pipeline in (('stock', small), ('reduced', rewritten)):
        np.random.seed(0)
        transforms = [TRANSFORMS.build(t) for t in pipeline]
        results = Compose(transforms[:2])(dict(info))
        outputs[name + '_decoded'] = results['img_shape']
        outputs[name] = np.stack(Compose(transforms[2:])(results)['imgs'])
    assert outputs['stock_decoded'] == (48, 64)
    assert outputs['reduced_decoded'] == (24, 32)  # half, = the resize
    assert outputs['stock'].shape == outputs['reduced'].shape == (16, 20, 20,
                                                                  3)
    diff = outputs['stock'].astype(float) - outputs['reduced']
    psnr = 10 * np.log10(255**2 / (diff**2).mean())
    assert psnr > 30, psnr


def test_reduced_decode_keeps_full_size_when_the_resize_barely_shrinks(
        rawframes):
    pipeline = stock_pipeline('rawframes')
    pipeline[2] = dict(type='Resize', scale=(-1, 25))  # > 48 / 2
    transforms = [TRANSFORMS.build(t) for t in reduced_decode(pipeline)]
    cfg = dataset_cfg(rawframes, pipeline)
    results = Compose(transforms[:2])(
        dict(
            frame_dir=osp.join(cfg['data_prefix']['img'], 'train', '00_000'),
            total_frames=40,
            filename_tmpl=cfg['filename_tmpl'],
            modality='RGB',
            start_index=1,
            offset=0))
    assert results['img_shape'] == (48, 64)


@pytest.mark.parametrize('key, value', [('temporal_sampling', 'uniform'),
                                        ('reduced_decode', 'yes'),
                                        ('prepared_copy', 3)])
def test_data_path_options_are_validated(key, value):
    with pytest.raises(ValueError, match=f'multi_grid.{key}'):
        MultiGridOptions.from_dict({key: value})


def test_data_path_options_reach_the_dataset(videos):
    """The converted config hands the options to MultiGridDataset."""
    cfg = dict(
        multi_grid=dict(temporal_sampling='random', reduced_decode=False),
        train_dataloader=dict(
            batch_size=2,
            dataset=dataset_cfg(
                videos,
                stock_pipeline('video') +
                [dict(type='FormatShape', input_format='NCTHW')])),
        train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=10),
        param_scheduler=[dict(type='MultiStepLR', milestones=[4, 8])])
    dataset = convert_config(cfg)['train_dataloader']['dataset']
    assert (dataset['temporal_sampling'], dataset['reduced_decode'],
            dataset['prepared_copy']) == ('random', False, None)
