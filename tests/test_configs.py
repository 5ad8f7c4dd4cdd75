"""Tests of the configs in configs/: they load, convert, build, and the models
take the multigrid input shapes; the Kinetics-400 ones equal the stock
MMAction2 configs except for the two multigrid lines."""
import glob
import os.path as osp

import mmaction
import pytest
import torch
from mmaction.registry import MODELS
from mmaction.utils import register_all_modules
from mmengine.config import Config

from mmaction_multigrid import convert_config
from mmaction_multigrid.tools.cli import DEMO_CONFIG, config_schedule

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', '*.py')))
STOCK = osp.join(
    osp.dirname(mmaction.__file__), '.mim', 'configs', 'recognition')
K400 = {
    'i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb_multigrid':
    'i3d',
    'slowfast_r50_8xb8-8x8x1-steplr-256e_kinetics400-rgb_multigrid':
    'slowfast',
    'slowonly_imagenet-pretrained-r50_8xb16-8x8x1-steplr-150e_kinetics400-'
    'rgb_multigrid':
    'slowonly',
}


def _name(path: str) -> str:
    return osp.splitext(osp.basename(path))[0]


def test_configs_present():
    assert sorted(map(_name,
                      CONFIGS)) == sorted(list(K400) + ['demo_multigrid'])


@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_config_converts_and_model_takes_shapes(path):
    cfg = Config.fromfile(path)
    converted = convert_config(cfg)
    assert converted.train_dataloader.dataset.type == 'MultiGridDataset'
    schedule = config_schedule(cfg)
    assert converted.train_cfg.max_epochs == schedule.max_epochs
    shapes = {(s.clip_len, s.size)
              for e in range(schedule.max_epochs)
              for s in schedule.batch_shapes(e)}
    smallest = min(shapes, key=lambda s: s[0] * s[1][0] * s[1][1])
    default = (schedule.clip_len, schedule.size)
    assert default in shapes

    register_all_modules()
    backbone = cfg.model.backbone
    backbone.pretrained = None  # no network here
    if 'pretrained2d' in backbone:
        backbone.pretrained2d = False
    model = MODELS.build(cfg.model).eval()
    for frames, (h, w) in (smallest, default):
        with torch.no_grad():
            scores = model.cls_head(
                model(torch.zeros(1, 1, 3, frames, h, w), mode='tensor'))
        assert scores.shape == (1, cfg.model.cls_head.num_classes)


@pytest.mark.parametrize('name', sorted(K400))
def test_k400_config_is_stock_plus_multigrid(name):
    ours = Config.fromfile(osp.join(ROOT, 'configs', name + '.py')).to_dict()
    stock = Config.fromfile(
        osp.join(STOCK, K400[name],
                 name.replace('_multigrid', '') + '.py')).to_dict()
    assert ours.pop('custom_imports') == dict(
        imports=['mmaction_multigrid'], allow_failed_imports=False)
    assert ours.pop('multi_grid')['default_s'] == (224, 224)
    assert ours == stock


def test_repo_demo_config_is_the_shipped_one():
    repo = Config.fromfile(osp.join(ROOT, 'configs', 'demo_multigrid.py'))
    assert repo.to_dict() == Config.fromfile(DEMO_CONFIG).to_dict()
    assert osp.dirname(DEMO_CONFIG) == osp.join(ROOT, 'mmaction_multigrid',
                                                'configs')
