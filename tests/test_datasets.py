"""Tests of MultiGridDataset over real VideoDataset / RawframeDataset
instances on generated clips, and through a real DataLoader."""
import copy

import numpy as np
import pytest
import torch
from mmengine.dataset import DefaultSampler, pseudo_collate

import mmaction_multigrid  # noqa: F401
from mmaction_multigrid.datasets.sampler import ShortCycleBatchSampler
from mmaction_multigrid.datasets.wrapper import MultiGridDataset, ShapedIndex
from mmaction_multigrid.tools.synthetic import dataset_cfg, make_dataset

T, R, S = 8, 2, 56
NUM_VIDEOS = 8


@pytest.fixture(scope='module', autouse=True)
def _scope():
    from mmaction.utils import register_all_modules
    register_all_modules(init_default_scope=True)


def _pipeline(fmt):
    """A stock-like I3D train pipeline at a small default shape."""
    if fmt == 'video':
        head = [
            dict(type='DecordInit', io_backend='disk'),
            dict(
                type='SampleFrames', clip_len=T, frame_interval=R,
                num_clips=1),
            dict(type='DecordDecode')
        ]
    else:
        head = [
            dict(
                type='SampleFrames', clip_len=T, frame_interval=R,
                num_clips=1),
            dict(type='RawFrameDecode', io_backend='disk')
        ]
    return head + [
        dict(type='Resize', scale=(-1, 64)),
        dict(
            type='MultiScaleCrop',
            input_size=S,
            scales=(1, 0.8),
            random_crop=False,
            max_wh_scale_gap=0),
        dict(type='Resize', scale=(S, S), keep_ratio=False),
        dict(type='Flip', flip_ratio=0.5),
        dict(type='FormatShape', input_format='NCTHW'),
        dict(type='PackActionInputs')
    ]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    out = {}
    for fmt in ('video', 'rawframes'):
        info = make_dataset(
            str(tmp_path_factory.mktemp(fmt)),
            num_classes=2,
            videos_per_class=NUM_VIDEOS // 2,
            num_frames=32,
            size=(48, 64),
            fmt=fmt,
            val_per_class=0)
        out[fmt] = dataset_cfg(info, _pipeline(fmt))
    return out


def _shape(sample):
    return tuple(sample['inputs'].shape)


@pytest.mark.parametrize('fmt', ['video', 'rawframes'])
def test_shaped_and_plain_indices(data, fmt):
    ds = MultiGridDataset(copy.deepcopy(data[fmt]))
    assert len(ds) == NUM_VIDEOS
    stock = ds.dataset.pipeline
    assert _shape(ds[0]) == (1, 3, T, S, S)
    for idx in (ShapedIndex(1, 2, 8, 28, 28), ShapedIndex(2, 4, 4, 40, 40),
                ShapedIndex(3, 8, 2, 56, 56), (4, 4, 4, 28, 40),
                ShapedIndex(5, 2, 8, 40, 28)):
        sample = ds[idx]
        assert _shape(sample) == (1, 3, idx[1], idx[3], idx[4])
        assert sample['data_samples'].gt_labels.item.item() == \
            ds.dataset[idx[0]]['data_samples'].gt_labels.item.item()
    # A plain int loads the default shape with the stock pipeline again.
    assert _shape(ds[6]) == (1, 3, T, S, S)
    assert ds.dataset.pipeline.pipeline is stock  # SkipBroken(stock)


def test_temporal_span_kept(data):
    """Frame indices of a reduced clip cover T*r frames, like the stock."""
    ds = MultiGridDataset(copy.deepcopy(data['video']))
    pipe = None
    for t, r in ((2, 8), (4, 4), (8, 2)):
        ds[ShapedIndex(0, t, r, 28, 28)]
        pipe = ds.dataset.pipeline
        # Run the cached pipeline up to (and without) packing.
        results = ds.dataset.get_data_info(0)
        for transform in pipe.pipeline.transforms[:-1]:
            results = transform(results)
        inds = np.asarray(results['frame_inds'])
        assert len(inds) == t
        assert inds.max() - inds.min() + r == T * R


def test_pipelines_cached(data):
    ds = MultiGridDataset(copy.deepcopy(data['video']))
    ds[ShapedIndex(0, 4, 4, 40, 40)]
    first = ds.dataset.pipeline
    ds[ShapedIndex(3, 4, 4, 40, 40)]
    assert ds.dataset.pipeline is first
    ds[ShapedIndex(3, 4, 4, 28, 28)]
    other = ds.dataset.pipeline
    assert other is not first
    ds[2]
    ds[ShapedIndex(7, 4, 4, 40, 40)]
    assert ds.dataset.pipeline is first
    ds[ShapedIndex(1, 4, 4, 28, 28)]
    assert ds.dataset.pipeline is other


def test_input_config_untouched(data):
    cfg = copy.deepcopy(data['video'])
    before = copy.deepcopy(cfg)
    MultiGridDataset(cfg)[ShapedIndex(0, 4, 4, 28, 28)]
    assert cfg == before


def test_repeat_dataset(data):
    ds = MultiGridDataset(
        dict(
            type='RepeatDataset',
            times=2,
            dataset=copy.deepcopy(data['video'])))
    assert len(ds) == 2 * NUM_VIDEOS
    assert _shape(ds[ShapedIndex(NUM_VIDEOS + 3, 2, 8, 28,
                                 28)]) == (1, 3, 2, 28, 28)
    assert _shape(ds[ShapedIndex(1, 4, 4, 40, 40)]) == (1, 3, 4, 40, 40)
    assert _shape(ds[NUM_VIDEOS + 1]) == (1, 3, T, S, S)


def test_concat_dataset(data):
    ds = MultiGridDataset(
        dict(
            type='ConcatDataset',
            datasets=[
                copy.deepcopy(data['video']),
                copy.deepcopy(data['rawframes'])
            ]))
    assert len(ds) == 2 * NUM_VIDEOS
    for i in (0, NUM_VIDEOS - 1, NUM_VIDEOS, 2 * NUM_VIDEOS - 1):
        assert _shape(ds[ShapedIndex(i, 4, 4, 28, 40)]) == (1, 3, 4, 28, 40)
        assert _shape(ds[i]) == (1, 3, T, S, S)


def test_metainfo(data):
    from mmaction.registry import DATASETS
    plain = DATASETS.build(copy.deepcopy(data['video']))
    ds = MultiGridDataset(copy.deepcopy(data['video']))
    assert ds.metainfo == plain.metainfo
    meta = ds.metainfo
    meta['injected'] = 1
    assert 'injected' not in ds.metainfo


def test_lazy_init(data):
    ds = MultiGridDataset(copy.deepcopy(data['video']), lazy_init=True)
    ds.full_init()
    assert len(ds) == NUM_VIDEOS
    assert _shape(ds[ShapedIndex(0, 4, 4, 28, 28)]) == (1, 3, 4, 28, 28)


# Schedule with the reference worked example's stages (E=100, milestones
# [40, 80]: ends 32 47 61 68 100 115 129 136 150) at T=8, r=2, S=56, B=1.
SCHEDULE = dict(
    clip_len=T,
    frame_interval=R,
    size=[S, S],
    max_epochs=100,
    milestones=[40, 80])
# epoch -> [(batch size, (t, r', h))] of the short cycle:
# epoch 0 base (b=8, t=2, s=40): k = round((40/28)^2)=2, round((40/39.6)^2)=1
# epoch 140 base (1, 8, 56): k = 4, 2.
EXPECTED = {
    0: [(16, (2, 8, 28)), (8, (2, 8, 40)), (8, (2, 8, 40))],
    140: [(4, (8, 2, 28)), (2, (8, 2, 40)), (1, (8, 2, 56))],
}


def test_dataloader_two_epochs_persistent_workers(data):
    ds = MultiGridDataset(
        dict(
            type='RepeatDataset',
            times=3,
            dataset=copy.deepcopy(data['video'])))
    sampler = DefaultSampler(ds, shuffle=True, seed=0)
    batch_sampler = ShortCycleBatchSampler(
        sampler, batch_size=1, drop_last=True, schedule=SCHEDULE)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_sampler=batch_sampler,
        num_workers=2,
        persistent_workers=True,
        collate_fn=pseudo_collate)
    n = len(ds)
    for epoch in (0, 140, 0):
        batch_sampler.set_epoch(epoch)
        sampler.set_epoch(epoch)
        cycle = EXPECTED[epoch]
        mean = sum(b for b, _ in cycle) / len(cycle)
        batches = list(loader)
        assert len(batches) == len(loader) == int(n // mean)
        for k, batch in enumerate(batches):
            size, (t, _, s) = cycle[k % len(cycle)]
            assert len(batch['inputs']) == size
            assert {tuple(x.shape)
                    for x in batch['inputs']} == {(1, 3, t, s, s)}
