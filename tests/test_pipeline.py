"""Tests of the pipeline rewriting, run with real MMAction2 transforms on a
real decoded clip."""
import copy
import os.path as osp

import cv2
import mmaction
import numpy as np
import pytest
from mmengine import Config
from mmengine.dataset import Compose

import mmaction_multigrid  # noqa: F401  (registers the package)
from mmaction_multigrid.datasets.pipeline import (clip_params, find_sampler,
                                                  output_size,
                                                  reshape_pipeline)
from mmaction_multigrid.tools.synthetic import make_dataset

CONFIGS = osp.join(
    osp.dirname(mmaction.__file__), '.mim', 'configs', 'recognition')
I3D = 'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py'
SLOWFAST = 'slowfast/slowfast_r50_8xb8-8x8x1-steplr-256e_kinetics400-rgb.py'
TPN = ('tpn/tpn-slowonly_imagenet-pretrained-r50_8xb8-8x8x1-150e_'
       'kinetics400-rgb.py')
SLOWONLY = ('slowonly/slowonly_imagenet-pretrained-r50_8xb16-8x8x1-steplr-'
            '150e_kinetics400-rgb.py')


@pytest.fixture(scope='module', autouse=True)
def _scope():
    from mmaction.utils import register_all_modules
    register_all_modules()


@pytest.fixture(scope='module')
def video(tmp_path_factory):
    info = make_dataset(
        str(tmp_path_factory.mktemp('pipe')),
        num_classes=1,
        videos_per_class=1,
        num_frames=72,
        size=(96, 128),
        val_per_class=0)
    return osp.join(info['data_prefix'], 'train', '00_000.mp4')


def _stock(path, split='train'):
    cfg = Config.fromfile(osp.join(CONFIGS, path))
    loader = cfg[f'{split}_dataloader']
    return [dict(t) for t in loader.dataset.pipeline]


def _run(pipeline, filename, pack=True):
    from mmaction.registry import TRANSFORMS
    transforms = [
        t for t in pipeline if pack or t['type'] != 'PackActionInputs'
    ]
    compose = Compose([TRANSFORMS.build(copy.deepcopy(t)) for t in transforms])
    return compose(
        dict(filename=filename, label=0, start_index=0, modality='RGB'))


def _sampler(pipeline):
    return next(t for t in pipeline if t['type'] == 'SampleFrames')


# (stock pipeline, T, r, S)
STOCK = [(I3D, 32, 2, (224, 224)), (SLOWFAST, 32, 2, (224, 224)),
         (TPN, 8, 8, (224, 224)), (SLOWONLY, 8, 8, (224, 224))]


@pytest.mark.parametrize('path,T,r,S', STOCK)
def test_stock_clip_params_and_size(path, T, r, S):
    pipeline = _stock(path)
    assert clip_params(pipeline) == (T, r)
    assert tuple(output_size(pipeline)) == S
    assert pipeline[find_sampler(pipeline)]['type'] == 'SampleFrames'


@pytest.mark.parametrize('path,T,r,S', STOCK)
@pytest.mark.parametrize('frac_t,size', [(0.25, (112, 112)), (0.5, (158, 158)),
                                         (1, (224, 224))])
def test_stock_pipelines_run(video, path, T, r, S, frac_t, size):
    stock = _stock(path)
    before = copy.deepcopy(stock)
    t = int(T * frac_t)
    interval = r * T // t
    new = reshape_pipeline(stock, t, interval, size)
    assert stock == before  # input untouched
    assert clip_params(new) == (t, interval)
    assert tuple(output_size(new)) == size
    out = _run(new, video)
    assert tuple(out['inputs'].shape) == (1, 3, t) + size
    # Same temporal extent as the stock clip.
    res = _run(new, video, pack=False)
    inds = np.asarray(res['frame_inds'])
    assert len(inds) == t
    assert inds.max() - inds.min() + interval == T * r


def test_i3d_field_of_view_in_config():
    new = reshape_pipeline(_stock(I3D), 8, 8, (112, 112))
    resize = next(t for t in new
                  if t['type'] == 'Resize' and t.get('keep_ratio', True))
    crop = next(t for t in new if t['type'] == 'MultiScaleCrop')
    short = resize['scale'][1]
    crop_size = crop['input_size']
    crop_size = crop_size if isinstance(crop_size, int) else crop_size[0]
    # Crop/short-side ratio of the stock pipeline (224/256) is kept.
    assert crop_size / short == pytest.approx(224 / 256, abs=0.01)
    assert crop['scales'] == (1, 0.8)


def test_center_crop_field_of_view(video):
    """Deterministic stock val pipeline (Resize + CenterCrop): the half-size
    clip equals the default clip downscaled by 2."""
    stock = _stock(I3D, 'val')
    assert stock[-3]['type'] == 'CenterCrop'
    assert _sampler(stock)['test_mode']
    default = _run(stock, video, pack=False)
    half = _run(reshape_pipeline(stock, 32, 2, (112, 112)), video, pack=False)
    np.testing.assert_array_equal(default['frame_inds'], half['frame_inds'])
    big = default['imgs'][0].transpose(1, 2, 3, 0)  # T, H, W, C
    small = half['imgs'][0].transpose(1, 2, 3, 0)
    assert big.shape == (32, 224, 224, 3)
    assert small.shape == (32, 112, 112, 3)
    down = np.stack(
        [cv2.resize(f, (112, 112), interpolation=cv2.INTER_AREA) for f in big])
    diff = np.abs(down.astype(np.float32) - small.astype(np.float32)).mean()
    assert diff < 3, diff
    # A shifted/zoomed view would differ a lot more: sanity of the metric.
    shifted = np.stack([cv2.resize(f[:, 30:], (112, 112)) for f in big])
    assert np.abs(shifted.astype(np.float32) - small).mean() > 2 * diff


def test_center_crop_temporal_span(video):
    stock = _stock(I3D, 'val')
    default = _run(stock, video, pack=False)
    short = _run(reshape_pipeline(stock, 8, 8, (112, 112)), video, pack=False)
    d, s = np.asarray(default['frame_inds']), np.asarray(short['frame_inds'])
    assert len(s) == 8
    assert np.all(np.diff(s) == 8)
    # Same extent (clip_len * interval frames) ...
    assert s.max() - s.min() + 8 == d.max() - d.min() + 2 == 64
    # ... around the same centre (SampleFrames' test mode centres the
    # first-to-last span, so the centres differ by under one interval).
    assert abs((s.max() + s.min()) / 2 - (d.max() + d.min()) / 2) < 8


@pytest.mark.parametrize('kind', ['center_crop', 'resize'])
def test_non_square_target(video, kind):
    stock = _stock(I3D)
    if kind == 'center_crop':
        stock[4] = dict(type='CenterCrop', crop_size=(320, 224))
        del stock[5]
    else:
        stock[5] = dict(type='Resize', scale=(320, 224), keep_ratio=False)
    assert tuple(output_size(stock)) == (224, 320)
    out = _run(stock, video)
    assert tuple(out['inputs'].shape) == (1, 3, 32, 224, 320)
    new = reshape_pipeline(stock, 16, 4, (158, 226))
    assert tuple(output_size(new)) == (158, 226)
    out = _run(new, video)
    assert tuple(out['inputs'].shape) == (1, 3, 16, 158, 226)


def test_errors():
    stock = _stock(I3D)
    no_sampler = [t for t in stock if t['type'] != 'SampleFrames']
    with pytest.raises(ValueError, match='SampleFrames'):
        find_sampler(no_sampler)
    with pytest.raises(ValueError, match='SampleFrames'):
        clip_params(no_sampler)
    tsn = _stock('tsn/tsn_imagenet-pretrained-r50_8xb32-1x1x3-100e_'
                 'kinetics400-rgb.py')
    with pytest.raises(ValueError, match='2D recogniser'):
        clip_params(tsn)
    rrc_last = [
        t for t in _stock(SLOWFAST)
        if not (t['type'] == 'Resize' and not t.get('keep_ratio', True))
    ]
    assert rrc_last[4]['type'] == 'RandomResizedCrop'
    with pytest.raises(ValueError, match='fixed'):
        output_size(rrc_last)
    with pytest.raises(ValueError):
        reshape_pipeline(rrc_last, 8, 8, (112, 112))
    keep_ratio_last = stock[:4] + stock[6:]
    with pytest.raises(ValueError, match='fixed'):
        output_size(keep_ratio_last)
