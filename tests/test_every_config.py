"""Every recognition config shipped with the installed MMAction2, with
``multi_grid = dict()`` added, converts and gets a multigrid schedule (what
``python -m mmaction_multigrid plan`` computes), or is refused with a
ValueError that names the reason. Configs only: no model is built here
(the families that the model check refuses before training are tested in
``test_train_e2e.py`` and below)."""
import glob
import math
import os.path as osp
import socket

import pytest
from conftest import STOCK, toy_config
from mmengine.config import Config
from mmengine.runner import Runner

import mmaction_multigrid  # noqa: F401  (registers the package)
from mmaction_multigrid.engine.multigrid_hook import schedule_table
from mmaction_multigrid.tools.cli import config_plan

PATHS = sorted(
    osp.relpath(p, STOCK)
    for p in glob.glob(osp.join(STOCK, '**', '*.py'), recursive=True)
    if '_base_' not in p)

# Refused by the conversion: (how to recognise the config, message part).
REFUSED = [
    (lambda cfg: cfg.model.type == 'Recognizer2D', '3D recogniser'),
    # OmniSource trains from a video and an image loader at once.
    (lambda cfg: cfg.model.type == 'RecognizerOmni',
     'MultiLoaderEpochBasedTrainLoop'),
]


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError('a config tried to reach the network')

    monkeypatch.setattr(socket.socket, 'connect', refuse)


def test_the_installed_configs_are_found():
    assert len(PATHS) > 100
    assert any(p.startswith('swin/') for p in PATHS)


def test_the_counts_the_readme_gives(no_network):
    """README, "Supported models": of the 119 installed recognition configs,
    26 are test-only, 34 are refused by the conversion and 59 are planned
    (46 train, 13 are then refused by the model check, which needs the
    models: not counted here)."""
    counts = dict(test_only=0, refused=0, planned=0)
    for path in PATHS:
        cfg = Config.fromfile(osp.join(STOCK, path))
        if 'train_dataloader' not in cfg or not cfg.get('param_scheduler'):
            counts['test_only'] += 1
            continue
        cfg.multi_grid = {}
        try:
            config_plan(cfg)
        except ValueError:
            counts['refused'] += 1
        else:
            counts['planned'] += 1
    assert len(PATHS) == 119
    assert counts == dict(test_only=26, refused=34, planned=59)


@pytest.mark.parametrize('path', PATHS)
def test_every_config_converts_or_is_refused(path, no_network):
    cfg = Config.fromfile(osp.join(STOCK, path))
    if 'train_dataloader' not in cfg or not cfg.get('param_scheduler'):
        # Test-only configs (X3D, UniFormer, VideoMAE, ...): nothing to
        # train, so nothing to convert.
        assert not cfg.get('train_cfg')
        return
    cfg.multi_grid = {}
    reasons = [message for match, message in REFUSED if match(cfg)]
    if reasons:
        with pytest.raises(ValueError, match=reasons[0]):
            config_plan(cfg)
        return
    plan = config_plan(cfg)
    schedule = plan.schedule
    epochs = cfg.train_cfg.max_epochs
    assert abs(schedule.max_epochs - 1.5 * epochs) <= 1
    assert 1 / schedule.compute_ratio() > 2.5
    table = schedule_table(plan, cfg.optim_wrapper.optimizer.lr)
    assert len(table.splitlines()) == len(schedule.stages) + 1
    for epoch in range(schedule.max_epochs):
        factor = plan.epoch_lr_factor(epoch + 0.5)
        assert math.isfinite(factor) and factor >= 0
    assert schedule.base_shape(schedule.max_epochs - 1).frames == (
        schedule.clip_len)


def test_uniformerv2_is_refused_by_the_model_check(videos, tmp_path):
    """A fixed-shape transformer (positional embeddings for 224x224)
    converts, and the model check stops it before the first iteration."""
    cfg = toy_config(
        'uniformerv2/uniformerv2-base-p16-res224_clip_8xb32-u8_'
        'kinetics400-rgb.py',
        videos,
        work_dir=str(tmp_path),
        multi_grid={},
        clip_len=8,
        size=224,
        short_side=256,
        options={
            'model.backbone.clip_pretrained': False,
            'model.backbone.layers': 1,
            'model.backbone.n_layers': 1,
            'model.backbone.return_list': [0],
            'model.backbone.mlp_dropout': [0.5]
        })
    # RandAugment through pytorchvideo, which is not installed here.
    dataset = cfg.train_dataloader.dataset
    dataset.pipeline = [
        t for t in dataset.pipeline if t['type'] != 'PytorchVideoWrapper'
    ]
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match='UniFormerV2.*cannot take'):
        runner.train()
    assert runner.iter == 0
