"""End-to-end: stock MMAction2 configs with non-step LR schedules plus the
two lines train through the unchanged ``tools/train.py`` on generated
videos, and every iteration's input shape and LR, recorded from what the
model receives, follow the documented non-step rule (docs/schedules.md):
the shapes as transcribed independently in ``tests/reference.py``, the
stock LR from MMEngine's own schedulers (``tests/mmengine_lr.py``)."""
import json
import math
import os.path as osp

import pytest
import reference as ref
from conftest import toy_config, train_with_tools
from mmengine_lr import stock_lrs

LONG = ((0.25, 0.5**0.5), (0.5, 0.5**0.5), (0.5, 1), (1, 1))
SHORT = (0.5, 0.5**0.5)
E = 4  # stock epochs of the shrunk schedules


def expected_run(n_train,
                 T,
                 S,
                 B,
                 schedulers,
                 base_lr,
                 long_cycle=True,
                 short_cycle=True,
                 cycles=2,
                 share=0.2,
                 scaling='linear'):
    """[(epoch, iter, backbone input shape, lr)] per the documented rule."""
    ipe = n_train // B  # the stock run's iterations per epoch
    lrs = stock_lrs(schedulers, E, ipe, base_lr)

    def stock_at(epoch):
        return lrs[min(math.floor(epoch * ipe + 1e-9), len(lrs) - 1)]

    phases = ref.cosine_phases(E, cycles, share)
    if long_cycle:
        sched = ref.long_cycle(T, (S, S), E, phases, LONG, SHORT, short_cycle,
                               1.5)
    else:
        sched = ref.short_only(T, (S, S), E, [], 1.5)
    rows = []
    for epoch in range(sched[-1][2]):
        _, base = ref.base_at(sched, epoch)
        cycle = ref.batches(B, base, (S, S), SHORT, short_cycle)
        n = ref.epoch_batches(n_train, [c[0] for c in cycle])
        for i in range(n):
            size, (h, w) = cycle[i % len(cycle)]
            e = epoch + i / n
            if long_cycle:
                factor = ref.cosine_lr_factor(e, sched, stock_at, E, phases,
                                              scaling)
            else:
                factor = stock_at(e / 1.5)
            # short_cycle_lr='scaled', the default for non-step schedules
            factor *= ref.short_cycle_lr_factor([c[0] for c in cycle], i,
                                                scaling)
            rows.append((epoch, i, [size, 3, base[1], h, w], base_lr * factor))
    return rows


def recorded(work_dir):
    with open(osp.join(work_dir, 'inputs.json')) as f:
        return [(r['epoch'], r['iter'], r['shape'], r['lr'])
                for r in json.load(f)]


def assert_follows(got, want):
    """Same iterations and shapes; LRs equal up to one constant factor, the
    base LR of the recorded parameter group (an ``lr_mult`` may apply)."""
    assert [g[:3] for g in got] == [w[:3] for w in want]
    base = got[-1][3] / want[-1][3] if want[-1][3] else got[0][3] / want[0][3]
    for g, w in zip(got, want):
        assert g[3] == pytest.approx(w[3] * base, rel=1e-6, abs=1e-15), (g, w)
    return base


SLOWFAST = [
    dict(
        type='LinearLR',
        start_factor=0.1,
        by_epoch=True,
        begin=0,
        end=1,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        T_max=E,
        eta_min=0,
        by_epoch=True,
        begin=0,
        end=E)
]
SWIN = [
    dict(
        type='LinearLR',
        start_factor=0.1,
        by_epoch=True,
        begin=0,
        end=0.5,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        T_max=E,
        eta_min=0,
        by_epoch=True,
        begin=0,
        end=E)
]
R2PLUS1D = [dict(type='CosineAnnealingLR', T_max=E, eta_min=0, by_epoch=True)]
# The schedule of the issue that found the closed forms off by one step.
EXP_POLY = [
    dict(type='ExponentialLR', gamma=0.8, begin=0, end=2),
    dict(type='PolyLR', power=0.9, begin=2, end=E)
]


def test_slowfast_cosine_long_and_short_cycles(videos, tmp_path):
    """SlowFast R50 8x8 256e's schedule (warm-up under a per-epoch cosine)
    with the paper's defaults."""
    cfg = toy_config(
        'slowfast/slowfast_r50_8xb8-8x8x1-256e_kinetics400-rgb.py',
        videos,
        clip_len=32,
        max_epochs=E,
        multi_grid={})
    cfg.param_scheduler = SLOWFAST
    work = train_with_tools(cfg, tmp_path)
    want = expected_run(16, 32, 32, 1, SLOWFAST, 0.001)
    assert assert_follows(recorded(work), want) == pytest.approx(1)
    dumped = (work / 'config.py').read_text()
    assert "type='MultiGridLR'" in dumped and 'CosineAnnealingLR' in dumped


def test_r2plus1d_cosine_short_cycle_only(videos32, tmp_path):
    """R(2+1)D's open-ended cosine, stretched by epoch_factor (2 clips per
    batch: its last BN sees 1x1x1 features at this toy size)."""
    cfg = toy_config(
        'r2plus1d/r2plus1d_r34_8xb8-8x8x1-180e_kinetics400-rgb.py',
        videos32,
        clip_len=8,
        max_epochs=E,
        batch_size=2,
        multi_grid=dict(long_cycle=False),
        options={'model.backbone.depth': 18})
    cfg.param_scheduler = R2PLUS1D
    work = train_with_tools(cfg, tmp_path)
    want = expected_run(32, 8, 32, 2, R2PLUS1D, 0.001, long_cycle=False)
    assert assert_follows(recorded(work), want) == pytest.approx(1)


def test_swin_adamw_fractional_warmup_sqrt_scaling(videos, tmp_path):
    """Video Swin-T: AdamW, a LinearLR warm-up ending at a fractional
    epoch, backbone ``lr_mult`` 0.1, ``lr_scaling='sqrt'``, long cycle
    only."""
    cfg = toy_config(
        'swin/swin-tiny-p244-w877_in1k-pre_8xb8-amp-32x2x1-30e_'
        'kinetics400-rgb.py',
        videos,
        clip_len=16,
        max_epochs=E,
        multi_grid=dict(short_cycle=False, lr_scaling='sqrt'),
        options={
            'model.cls_head.in_channels': 192,
            # AMP needs a GPU; the LR schedule is the same without.
            'optim_wrapper.type': 'OptimWrapper'
        })
    cfg.optim_wrapper.pop('loss_scale', None)
    cfg.model.backbone.arch = dict(
        embed_dims=24, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])
    cfg.param_scheduler = SWIN
    work = train_with_tools(cfg, tmp_path)
    want = expected_run(
        16, 16, 32, 1, SWIN, 0.001, short_cycle=False, scaling='sqrt')
    base = assert_follows(recorded(work), want)
    assert base == pytest.approx(0.1)  # the backbone's lr_mult


def test_i3d_exponential_then_poly_short_cycle_only(videos, tmp_path):
    """Short cycles only: every iteration trains at the LR MMEngine's
    ExponentialLR and PolyLR give the stock run at the equivalent stock
    iteration, times the short-cycle batch factor."""
    cfg = toy_config(
        'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py',
        videos,
        clip_len=32,
        max_epochs=E,
        multi_grid=dict(long_cycle=False))
    cfg.param_scheduler = EXP_POLY
    work = train_with_tools(cfg, tmp_path)
    want = expected_run(16, 32, 32, 1, EXP_POLY, 0.001, long_cycle=False)
    assert assert_follows(recorded(work), want) == pytest.approx(1)
