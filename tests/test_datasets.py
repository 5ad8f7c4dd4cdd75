"""Tests of MultiGridDataset over real VideoDataset / RawframeDataset
instances on generated clips, and through a real DataLoader."""
import copy

import numpy as np
import pytest
import torch
from conftest import schedule_plan
from mmaction.datasets import VideoDataset
from mmaction.registry import DATASETS
from mmengine.dataset import DefaultSampler, pseudo_collate

import mmaction_multigrid  # noqa: F401
from mmaction_multigrid.datasets.sampler import ShortCycleBatchSampler
from mmaction_multigrid.datasets.walk import leaf_datasets, locate
from mmaction_multigrid.datasets.wrapper import (MultiGridDataset, ShapedIndex,
                                                 SkipBroken)
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


@pytest.fixture
def ran(monkeypatch):
    """The pipelines that ran, in order, with the data info each got."""
    calls = []
    call = SkipBroken.__call__

    def spy(self, results):
        calls.append((self, dict(results)))
        return call(self, results)

    monkeypatch.setattr(SkipBroken, '__call__', spy)
    return calls


@pytest.mark.parametrize('fmt', ['video', 'rawframes'])
def test_shaped_and_plain_indices(data, fmt, ran):
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
    assert ran[-1][0].pipeline is stock  # SkipBroken(stock)
    assert ran[-1][0] is ds.pipeline_for()


def test_temporal_span_kept(data, ran):
    """Frame indices of a reduced clip cover T*r frames, like the stock."""
    ds = MultiGridDataset(copy.deepcopy(data['video']))
    for t, r in ((2, 8), (4, 4), (8, 2)):
        ds[ShapedIndex(0, t, r, 28, 28)]
        pipe = ran[-1][0]
        assert pipe is ds.pipeline_for(ShapedIndex(5, t, r, 28, 28, 7))
        # Run the cached pipeline up to (and without) packing.
        results = ds.dataset.get_data_info(0)
        for transform in pipe.pipeline.transforms[:-1]:
            results = transform(results)
        inds = np.asarray(results['frame_inds'])
        assert len(inds) == t
        assert inds.max() - inds.min() + r == T * R


def test_pipelines_cached(data, ran):
    ds = MultiGridDataset(copy.deepcopy(data['video']))
    ds[ShapedIndex(0, 4, 4, 40, 40)]
    first = ran[-1][0]
    ds[ShapedIndex(3, 4, 4, 40, 40)]
    assert ran[-1][0] is first
    ds[ShapedIndex(3, 4, 4, 28, 28)]
    other = ran[-1][0]
    assert other is not first
    ds[2]
    ds[ShapedIndex(7, 4, 4, 40, 40)]
    assert ran[-1][0] is first
    ds[ShapedIndex(1, 4, 4, 28, 28)]
    assert ran[-1][0] is other


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


@DATASETS.register_module(force=True)
class UnevenVideoDataset(VideoDataset):
    """A ``VideoDataset`` with uneven classes (six samples, then two), so
    that ``ClassBalancedDataset`` repeats some samples."""

    def get_cat_ids(self, idx):
        return [int(idx >= 6)]


def _nested(data):
    """Concat[Repeat(video), Concat[rawframes, ClassBalanced(video)]]."""
    return dict(
        type='ConcatDataset',
        datasets=[
            dict(
                type='RepeatDataset',
                times=2,
                dataset=copy.deepcopy(data['video'])),
            dict(
                type='ConcatDataset',
                datasets=[
                    copy.deepcopy(data['rawframes']),
                    dict(
                        type='ClassBalancedDataset',
                        oversample_thr=0.5,
                        dataset=dict(
                            copy.deepcopy(data['video']),
                            type='UnevenVideoDataset'))
                ])
        ])


def test_leaf_datasets_of_configs_and_objects(data):
    cfg = _nested(data)
    inner = cfg['datasets'][1]['datasets']
    want = [cfg['datasets'][0]['dataset'], inner[0], inner[1]['dataset']]
    got = leaf_datasets(cfg)
    assert len(got) == 3 and all(g is w for g, w in zip(got, want))
    assert leaf_datasets(want[0])[0] is want[0]
    built = DATASETS.build(_nested(data))
    leaves = leaf_datasets(built)
    assert [type(leaf).__name__ for leaf in leaves] == \
        ['VideoDataset', 'RawframeDataset', 'UnevenVideoDataset']
    assert leaves[0] is built.datasets[0].dataset
    assert leaves[2] is built.datasets[1].datasets[1].dataset
    assert leaf_datasets(leaves[1]) == [leaves[1]]


def test_locate_maps_as_the_stock_wrappers(data):
    built = DATASETS.build(_nested(data))
    # 16 repeated + 8 + 10 class-balanced (samples 6 and 7 twice).
    assert len(built) == 2 * NUM_VIDEOS + NUM_VIDEOS + 10
    leaves = leaf_datasets(built)
    for i in range(len(built)):
        leaf, j = locate(built, i)
        assert any(leaf is other for other in leaves)
        assert leaf.get_data_info(j) == built.get_data_info(i)


def test_shaped_samples_follow_the_stock_mapping(data, ran):
    ds = MultiGridDataset(_nested(data))
    assert len(ds) == len(ds.dataset)
    for i in range(len(ds)):
        assert _shape(ds[ShapedIndex(i, 2, 8, 28, 28)]) == (1, 3, 2, 28, 28)
        assert ran[-1][1] == ds.dataset.get_data_info(i)


def test_wrapped_datasets_are_not_written(data):
    """The wrapper only reads the leaf datasets: after samples of several
    shapes from every leaf, each keeps its pipeline object, its transforms
    and every other attribute."""
    ds = MultiGridDataset(_nested(data))
    leaves = leaf_datasets(ds.dataset)
    attributes = [dict(vars(leaf)) for leaf in leaves]
    transforms = [list(leaf.pipeline.transforms) for leaf in leaves]
    reprs = [[repr(t) for t in leaf.pipeline.transforms] for leaf in leaves]
    shapes = [(2, 8, 28, 28), (4, 4, 40, 40), (8, 2, 56, 56)]
    for i in (0, 17, 2 * NUM_VIDEOS + 3, 3 * NUM_VIDEOS + 9):
        for shape in shapes:
            ds[ShapedIndex(i, *shape)]
        ds[i]
    for k, leaf in enumerate(leaves):
        assert leaf.pipeline is attributes[k]['pipeline']
        assert vars(leaf).keys() == attributes[k].keys()
        assert all(
            vars(leaf)[name] is value for name, value in attributes[k].items())
        assert len(leaf.pipeline.transforms) == len(transforms[k])
        assert all(t is u
                   for t, u in zip(leaf.pipeline.transforms, transforms[k]))
        assert [repr(t) for t in leaf.pipeline.transforms] == reprs[k]


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
        sampler, batch_size=1, drop_last=True, plan=schedule_plan(**SCHEDULE))
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
