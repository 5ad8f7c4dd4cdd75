"""Tests of the configs in configs/: they load, convert, build, and the models
take the multigrid input shapes; the Kinetics-400 ones equal the stock
MMAction2 configs except for the two multigrid lines."""
import ast
import glob
import os.path as osp

import mmaction
import pytest
import torch
from mmaction.registry import MODELS
from mmaction.utils import register_all_modules
from mmengine.config import Config

from mmaction_multigrid import convert_config
from mmaction_multigrid.tools.cli import DEMO_CONFIG, config_plan

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
    schedule = config_plan(cfg).schedule
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


MULTI_GRID = dict(
    long_cycle=True,
    short_cycle=True,
    long_cycle_factors=((0.25, 0.5**0.5), (0.5, 0.5**0.5), (0.5, 1), (1, 1)),
    short_cycle_factors=(0.5, 0.5**0.5),
    epoch_factor=1.5,
    default_s=(224, 224))
# What a training run is made of: a config that inherits the stock one must
# agree on each of these (checked one by one for a readable failure, then the
# whole dict, so nothing else differs either).
KEYS = ('model', 'train_pipeline', 'val_pipeline', 'test_pipeline',
        'train_dataloader', 'val_dataloader', 'test_dataloader',
        'optim_wrapper', 'param_scheduler', 'train_cfg', 'val_cfg', 'test_cfg',
        'default_hooks', 'default_scope')


@pytest.mark.parametrize('name', sorted(K400))
def test_k400_config_is_stock_plus_multigrid(name):
    """The config in configs/ (now a _base_ on the installed stock file)
    loads to the stock config, loaded on its own, plus the two multigrid
    lines: what the full copy it replaced held."""
    path = osp.join(ROOT, 'configs', name + '.py')
    # The stock config is inherited, not copied out: only three names.
    with open(path, encoding='utf-8') as f:
        names = [
            t.id for node in ast.parse(f.read()).body for t in node.targets
        ]
    assert names == ['_base_', 'custom_imports', 'multi_grid']
    ours = Config.fromfile(path).to_dict()
    stock = Config.fromfile(
        osp.join(STOCK, K400[name],
                 name.replace('_multigrid', '') + '.py')).to_dict()
    assert ours.pop('custom_imports') == dict(
        imports=['mmaction_multigrid'], allow_failed_imports=False)
    assert ours.pop('multi_grid') == MULTI_GRID
    for key in KEYS:
        assert key in stock, key
        assert ours[key] == stock[key], key
    assert ours == stock


def test_repo_demo_config_is_the_shipped_one():
    repo = Config.fromfile(osp.join(ROOT, 'configs', 'demo_multigrid.py'))
    assert repo.to_dict() == Config.fromfile(DEMO_CONFIG).to_dict()
    assert osp.dirname(DEMO_CONFIG) == osp.join(ROOT, 'mmaction_multigrid',
                                                'configs')
