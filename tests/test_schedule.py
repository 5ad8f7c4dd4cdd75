"""Tests of MultiGridSchedule against the reference numbers.

Expected values are either hand-written from the worked examples of
``docs/method.md`` or re-derived here, independently of the
package, from the reference formulas (:func:`ref_schedule`).
"""
import math

import pytest
import reference

from mmaction_multigrid.schedule.cycles import MultiGridSchedule

R2 = 0.5**0.5
LONG = ((0.25, R2), (0.5, R2), (0.5, 1), (1, 1))
SHORT = (0.5, R2)


# --------------------------------------------------------------------------
# Independent re-derivation of the reference (used here and by
# test_convert.py). Sizes are (height, width); the square case is H == W.
# --------------------------------------------------------------------------
def ref_schedule(T,
                 S,
                 E,
                 milestones,
                 gamma=0.1,
                 long_cycle=True,
                 short_cycle=True,
                 long_factors=LONG,
                 short_factors=SHORT,
                 epoch_factor=1.5):
    """Reference long-cycle schedule.

    Returns:
        dict with ``ends`` (end epochs), ``bases`` ((b, t, (h, w)) per
        entry), ``stages`` (LR stage per entry), ``points``/``rel`` (LR
        change points and relative LRs), ``max_epochs``.
    """
    H, W = (S, S) if isinstance(S, int) else S
    if not long_cycle:
        ms = [int(m * epoch_factor) for m in milestones]
        points = [0] + ms
        return dict(
            max_epochs=int(E * epoch_factor),
            milestones=ms,
            points=points,
            rel=[gamma**k for k in range(len(points))])
    cost = T * H * W
    all_shapes, avg_b = [], []
    for tf, sf in long_factors:
        t = round(T * tf)
        base = (round(H * sf), round(W * sf))
        sizes = [base]
        if short_cycle:
            sizes = [(H * short_factors[0], W * short_factors[0]),
                     (H * short_factors[1], W * short_factors[1]), base]
        shapes = [(round(cost / (t * h * w)), t, (round(h), round(w)))
                  for h, w in sizes]
        all_shapes.append(shapes)
        avg_b.append(sum(s[0] for s in shapes) / len(shapes))
    steps = [0] + list(milestones)
    entries, iters = [], 0.0
    for i in range(len(steps) - 1):
        for j, shapes in enumerate(all_shapes):
            ep = (steps[i + 1] - steps[i]) * avg_b[j] / sum(avg_b)
            iters += ep / avg_b[j]
            entries.append((i, shapes[-1], ep))
    saving = steps[-1] / iters
    # Fine-tuning at the last long-cycle entry's base shape.
    entries.append((len(steps) - 1, all_shapes[-1][-1],
                    (E - steps[-1]) / saving * avg_b[-1]))
    x = E * epoch_factor / sum(e[2] for e in entries)
    ends, total = [], 0.0
    for e in entries:
        total += e[2] * x
        ends.append(round(total))
    rel = [gamma**stage * shape[0] for stage, shape, _ in entries]
    rel = rel[:-1] + [rel[-2], rel[-1]]
    points = [0] + ends[:-1] + [(ends[-2] + ends[-1]) // 2]
    return dict(
        ends=ends,
        bases=[e[1] for e in entries],
        stages=[e[0] for e in entries],
        points=points,
        rel=rel,
        max_epochs=ends[-1])


def ref_rel_lr(points, rel, epoch):
    return rel[max(i for i, p in enumerate(points) if p <= epoch)]


def ref_short_cycle(base, S, B, short_factors=SHORT):
    """[(batch, (h, w))] of the three short-cycle iterations of ``base``."""
    H, W = (S, S) if isinstance(S, int) else S
    b, _, (h, w) = base
    out = []
    for f in short_factors:
        k = round(h * w / (f * H * f * W))
        out.append((B * b * k, (round(f * H), round(f * W))))
    out.append((B * b, (h, w)))
    return out


def _base_at(ends, bases, epoch):
    return bases[next(i for i, e in enumerate(ends) if e > epoch)]


def _sched(**kw):
    args = dict(
        clip_len=32,
        frame_interval=2,
        size=224,
        max_epochs=100,
        milestones=[40, 80],
        batch_size=8)
    args.update(kw)
    return MultiGridSchedule(**args)


# --------------------------------------------------------------------------
# Hand-written worked examples.
# --------------------------------------------------------------------------
I3D_ENDS = [32, 47, 61, 68, 100, 115, 129, 136, 150]
I3D_BASES = [[8, 8, 158], [4, 16, 158], [2, 16, 224], [1, 32, 224]] * 2 + [[
    1, 32, 224
]]
I3D_POINTS = [0, 32, 47, 61, 68, 100, 115, 129, 136, 143]
I3D_REL = [8, 4, 2, 1, .8, .4, .2, .1, .1, .01]
SF_ENDS = [76, 114, 147, 164, 212, 237, 258, 268, 302, 319, 334, 342, 384]


def test_reference_helper_reproduces_worked_examples():
    # The independent derivation must itself match the reference tables.
    ref = ref_schedule(32, 224, 100, [40, 80])
    assert ref['ends'] == I3D_ENDS
    assert [[b, t, s[0]] for b, t, s in ref['bases']] == I3D_BASES
    assert ref['points'] == I3D_POINTS
    assert ref['rel'] == pytest.approx(I3D_REL)
    assert ref_schedule(32, 224, 256, [94, 154, 196])['ends'] == SF_ENDS


def test_i3d_long_cycle_table():
    sched = _sched()
    assert sched.max_epochs == 150
    assert [s.end_epoch for s in sched.stages] == I3D_ENDS
    assert [[s.shape.batch, s.shape.frames, s.shape.size[0]]
            for s in sched.stages] == I3D_BASES
    assert all(s.shape.size[0] == s.shape.size[1] for s in sched.stages)
    assert [s.lr_stage for s in sched.stages] == [0] * 4 + [1] * 4 + [2]


@pytest.mark.parametrize('epoch,base',
                         [(0, (8, 8, 158)), (31, (8, 8, 158)),
                          (32, (4, 16, 158)), (46, (4, 16, 158)),
                          (47, (2, 16, 224)), (61, (1, 32, 224)),
                          (67, (1, 32, 224)), (68, (8, 8, 158)),
                          (99, (8, 8, 158)), (100, (4, 16, 158)),
                          (115, (2, 16, 224)), (129, (1, 32, 224)),
                          (136, (1, 32, 224)), (149, (1, 32, 224))])
def test_i3d_base_shape_per_epoch(epoch, base):
    shape = _sched().base_shape(epoch)
    assert (shape.batch, shape.frames, shape.size) == (base[0], base[1],
                                                       (base[2], base[2]))


def test_i3d_lr_points():
    points, rel = _sched().lr_points()
    assert list(points) == I3D_POINTS
    assert list(rel) == pytest.approx(I3D_REL)


@pytest.mark.parametrize('epoch,factor', [(0, 8), (31.99, 8), (32, 4), (47, 2),
                                          (61, 1), (67.5, 1), (68, .8),
                                          (100, .4), (115, .2), (129, .1),
                                          (136, .1), (142.9, .1), (143, .01),
                                          (149.5, .01)])
def test_i3d_lr_factor(epoch, factor):
    assert _sched().lr_factor(epoch) == pytest.approx(factor)


# base shape -> per-GPU batch sizes (B=8), crops, derived by the reference
# formula k_i = round((s_base / (f_i * S))**2).
def _expected_short(base_b, base_s, B=8, S=224):
    ks = [round((base_s / (f * S))**2) for f in SHORT]
    return ([B * base_b * k for k in ks] + [B * base_b],
            [round(f * S) for f in SHORT] + [base_s])


@pytest.mark.parametrize('epoch,base_b,t,base_s,interval', [
    (0, 8, 8, 158, 8),
    (32, 4, 16, 158, 4),
    (50, 2, 16, 224, 4),
    (65, 1, 32, 224, 2),
    (140, 1, 32, 224, 2),
])
def test_i3d_short_cycle_batches(epoch, base_b, t, base_s, interval):
    shapes = _sched().batch_shapes(epoch)
    sizes, crops = _expected_short(base_b, base_s)
    assert [s.batch_size for s in shapes] == sizes
    assert [s.size for s in shapes] == [(c, c) for c in crops]
    assert all(s.clip_len == t for s in shapes)
    # Temporal span kept: r * T / t.
    assert all(s.frame_interval == interval == 2 * 32 // t for s in shapes)


def test_short_cycle_worked_examples():
    sched = _sched()
    assert [s.batch_size for s in sched.batch_shapes(0)] == [128, 64, 64]
    assert [s.size[0] for s in sched.batch_shapes(0)] == [112, 158, 158]
    assert [s.batch_size for s in sched.batch_shapes(50)] == [64, 32, 16]
    assert [s.size[0] for s in sched.batch_shapes(50)] == [112, 158, 224]


# --------------------------------------------------------------------------
# SlowFast 256 epochs with warm-up.
# --------------------------------------------------------------------------
def _slowfast():
    return _sched(
        max_epochs=256,
        milestones=[94, 154, 196],
        warmup_epochs=34,
        warmup_start_factor=0.1)


def test_slowfast_ends_and_lr():
    sched = _slowfast()
    assert [s.end_epoch for s in sched.stages] == SF_ENDS
    assert sched.max_epochs == 384
    points, rel = sched.lr_points()
    assert list(points) == [0] + SF_ENDS[:-1] + [(342 + 384) // 2]
    assert list(rel) == pytest.approx(
        [8, 4, 2, 1, .8, .4, .2, .1, .08, .04, .02, .01, .01, .001])


@pytest.mark.parametrize('epoch', [0, 0.25, 1, 5.5, 17, 33, 33.9])
def test_slowfast_warmup(epoch):
    # lr_at(34) is the multigrid LR at epoch 34: first entry, 8x.
    expected = 0.1 + epoch * (8 - 0.1) / 34
    assert _slowfast().lr_factor(epoch) == pytest.approx(expected)


@pytest.mark.parametrize('epoch,factor', [(34, 8), (75.9, 8), (76, 4),
                                          (343, .01), (363, .001)])
def test_slowfast_after_warmup(epoch, factor):
    assert _slowfast().lr_factor(epoch) == pytest.approx(factor)


# --------------------------------------------------------------------------
# Table: schedules re-derived from the reference formulas.
# --------------------------------------------------------------------------
CASES = [
    # T, r, S, E, milestones, B, kwargs
    (32, 2, 224, 100, [40, 80], 8, {}),
    (32, 2, 224, 256, [94, 154, 196], 8, {}),
    (8, 8, 224, 150, [100, 140], 16, {}),
    (32, 2, 224, 58, [32, 48], 12, {}),
    (8, 8, 224, 150, [75, 125], 8, {}),
    (32, 2, (224, 320), 100, [40, 80], 8, {}),
    (16, 4, (256, 340), 100, [40, 80], 4, {}),
    (32, 2, 224, 100, [40, 80], 8, dict(short_cycle=False)),
    (16, 4, (256, 340), 100, [40, 80], 4, dict(short_cycle=False)),
    (32, 2, 224, 100, [40,
                       80], 8, dict(long_cycle_factors=((0.5, R2), (1, 1)))),
    (16, 2, 224, 120, [50, 100], 2,
     dict(long_cycle_factors=((0.25, R2), (0.5, 1), (1, 1)))),
    (32, 2, 224, 100, [40, 80], 8, dict(epoch_factor=2.0)),
    (32, 2, 224, 100, [40, 80], 8, dict(gamma=0.5)),
]


def _ref_kwargs(kw):
    out = dict(kw)
    if 'long_cycle_factors' in out:
        out['long_factors'] = out.pop('long_cycle_factors')
    return out


@pytest.mark.parametrize('T,r,S,E,milestones,B,kw', CASES)
def test_long_cycle_table(T, r, S, E, milestones, B, kw):
    ref = ref_schedule(T, S, E, milestones, **_ref_kwargs(kw))
    sched = MultiGridSchedule(
        clip_len=T,
        frame_interval=r,
        size=S,
        max_epochs=E,
        milestones=milestones,
        batch_size=B,
        **kw)
    HW = (S, S) if isinstance(S, int) else tuple(S)
    assert sched.max_epochs == ref['max_epochs']
    assert [s.end_epoch for s in sched.stages] == ref['ends']
    assert [(s.shape.batch, s.shape.frames, tuple(s.shape.size))
            for s in sched.stages] == ref['bases']
    # These factors end in (1, 1): fine-tuning runs the default shape.
    assert ref['bases'][-1] == (1, T, HW)
    points, rel = sched.lr_points()
    assert list(points) == ref['points']
    assert list(rel) == pytest.approx(ref['rel'])
    short = kw.get('short_cycle', True)
    for epoch in range(ref['max_epochs']):
        base = _base_at(ref['ends'], ref['bases'], epoch)
        shapes = sched.batch_shapes(epoch)
        if short:
            expected = ref_short_cycle(base, S, B)
        else:
            expected = [(B * base[0], base[2])]
        assert [(s.batch_size, tuple(s.size)) for s in shapes] == expected, \
            epoch
        assert all(s.clip_len == base[1] for s in shapes)
        assert all(s.frame_interval == r * T // base[1] for s in shapes)
        # LR at the start of every epoch.
        assert sched.lr_factor(epoch) == pytest.approx(
            ref_rel_lr(ref['points'], ref['rel'], epoch))


def test_non_square_scaled_alike():
    sched = _sched(size=(224, 320))
    assert [s.end_epoch for s in sched.stages] == I3D_ENDS
    assert [tuple(s.shape.size) for s in sched.stages[:4]] == [(158, 226),
                                                               (158, 226),
                                                               (224, 320),
                                                               (224, 320)]
    assert [tuple(s.size) for s in sched.batch_shapes(0)] == [(112, 160),
                                                              (158, 226),
                                                              (158, 226)]
    assert [s.batch_size for s in sched.batch_shapes(0)] == [128, 64, 64]
    sched = _sched(size=(256, 340))
    assert [tuple(s.size) for s in sched.batch_shapes(50)] == [(128, 170),
                                                               (181, 240),
                                                               (256, 340)]


# --------------------------------------------------------------------------
# Factors that do not end in (1, 1): fine-tuning at the last long-cycle
# entry's shape, its first half at gamma**(n-1) * b_last. Expected values
# from PySlowFast's own loop (reference.pyslowfast_long_cycle).
# --------------------------------------------------------------------------
def test_fine_tuning_worked_example():
    """By hand: T=32, S=224, E=100, milestones [40, 80], factors
    ((0.5, 0.707), (0.5, 1)). Short-cycle batches 8/4/4 and 8/4/2 (averages
    16/3 and 14/3); per stage 21.33 + 18.67 epochs in 4 + 4 default
    iterations, saving 80 / 16 = 5; fine-tuning 20 / 5 * 14/3 = 18.67;
    stretched by 150 / 98.67."""
    sched = _sched(long_cycle_factors=((0.5, R2), (0.5, 1)))
    assert [s.end_epoch for s in sched.stages] == [32, 61, 93, 122, 150]
    assert [(s.shape.batch, s.shape.frames, s.shape.size[0])
            for s in sched.stages] == [(4, 16, 158),
                                       (2, 16, 224)] * 2 + [(2, 16, 224)]
    points, rel = sched.lr_points()
    assert points == [0, 32, 61, 93, 122, 136]
    assert rel == pytest.approx([4, 2, .4, .2, .2, .02])


FINE_TUNING_CASES = [
    # T, S, E, milestones, gamma, long_cycle_factors, short_cycle, factor
    (32, 224, 100, [40,
                    80], 0.1, ((0.25, R2), (0.5, R2), (0.5, 1)), True, 1.5),
    (32, 224, 100, [40, 80], 0.1, ((0.5, R2), (1, R2)), True, 1.5),
    (32, 224, 256, [94, 154, 196], 0.1, ((0.25, 0.5), (0.5, R2)), True, 1.5),
    (8, 224, 150, [100, 140], 0.5, ((1, R2), ), True, 2.0),
    (16, 256, 120, [50, 100], 0.1, ((1, 1), (0.5, R2)), True, 1.5),
    (32, 224, 100, [40, 80], 0.1, ((0.5, 1), (0.5, R2)), False, 1.5),
    (16, 160, 58, [32, 48], 0.2, ((0.25, R2), (0.5, 0.5)), False, 1.3),
]


@pytest.mark.parametrize('T,S,E,milestones,gamma,factors,short,epoch_factor',
                         FINE_TUNING_CASES)
def test_fine_tuning_as_pyslowfast(T, S, E, milestones, gamma, factors, short,
                                   epoch_factor):
    final, steps, lrs, max_epoch = reference.pyslowfast_long_cycle(
        T, S, E, milestones, gamma, factors, SHORT, short, epoch_factor)
    sched = _sched(
        clip_len=T,
        size=S,
        max_epochs=E,
        milestones=milestones,
        gamma=gamma,
        long_cycle_factors=factors,
        short_cycle=short,
        epoch_factor=epoch_factor)
    assert sched.max_epochs == max_epoch
    assert [(s.lr_stage, s.end_epoch)
            for s in sched.stages] == [(stage, end) for stage, _, end in final]
    assert [[s.shape.batch, s.shape.frames, *s.shape.size]
            for s in sched.stages] == [[b, t, s, s]
                                       for _, (b, t, s), _ in final]
    # Not the default shape: the case the fine-tuning rule is about.
    assert final[-1][1] != [1, T, S]
    points, rel = sched.lr_points()
    assert points == steps
    assert rel == pytest.approx(lrs)
    for epoch in range(max_epoch):
        index = max(i for i, p in enumerate(steps) if p <= epoch)
        assert sched.lr_factor(epoch) == pytest.approx(lrs[index]), epoch


# --------------------------------------------------------------------------
# Long-only and short-only modes.
# --------------------------------------------------------------------------
def test_long_only_no_index_error():
    sched = _sched(short_cycle=False)
    assert sched.stages[-1].shape.frames == 32
    assert tuple(sched.stages[-1].shape.size) == (224, 224)
    assert sched.stages[-1].shape.batch == 1
    assert [s.batch_size for s in sched.batch_shapes(0)] == [64]
    assert [s.batch_size
            for s in sched.batch_shapes(sched.max_epochs - 1)] == [8]
    ref = ref_schedule(32, 224, 100, [40, 80], short_cycle=False)
    assert sched.max_epochs == ref['max_epochs']


@pytest.mark.parametrize('E,milestones,factor', [(100, [40, 80], 1.5),
                                                 (256, [94, 154, 196], 1.5),
                                                 (58, [32, 48], 1.5),
                                                 (150, [75, 125], 1.3)])
def test_short_only(E, milestones, factor):
    B = 8
    sched = _sched(
        long_cycle=False,
        max_epochs=E,
        milestones=milestones,
        epoch_factor=factor)
    ms = [int(m * factor) for m in milestones]
    assert sched.max_epochs == int(E * factor)
    points, rel = sched.lr_points()
    assert list(points) == [0] + ms
    assert list(rel) == pytest.approx([0.1**k for k in range(len(ms) + 1)])
    for epoch in range(sched.max_epochs):
        base = sched.base_shape(epoch)
        assert (base.batch, base.frames, tuple(base.size)) == (1, 32, (224,
                                                                       224))
        shapes = sched.batch_shapes(epoch)
        assert [s.batch_size for s in shapes] == [B * 4, B * 2, B]
        assert [s.size for s in shapes] == [(112, 112), (158, 158), (224, 224)]
        assert all((s.clip_len, s.frame_interval) == (32, 2) for s in shapes)
        k = sum(m <= epoch for m in ms)
        assert sched.lr_factor(epoch) == pytest.approx(0.1**k)


# --------------------------------------------------------------------------
# Batches per epoch, errors.
# --------------------------------------------------------------------------
@pytest.mark.parametrize('epoch,n', [(0, 1000), (0, 256), (0, 85), (50, 999),
                                     (140, 7), (140, 100000)])
def test_num_batches_drop_last(epoch, n):
    sizes = [s.batch_size for s in _sched().batch_shapes(epoch)]
    expected = math.floor(n / (sum(sizes) / len(sizes)))
    assert _sched().num_batches(epoch, n, drop_last=True) == expected


@pytest.mark.parametrize('kw,key', [
    (dict(clip_len=2, long_cycle_factors=((0.1, 1),
                                          (1, 1))), 'long_cycle_factors'),
    (dict(size=2, short_cycle_factors=(0.2, 0.5)), 'short_cycle_factors'),
    (dict(size=2, long_cycle_factors=((1, 0.2),
                                      (1, 1))), 'long_cycle_factors'),
])
def test_errors(kw, key):
    with pytest.raises(ValueError, match=key):
        _sched(**kw)


def test_epoch_compute_adds_up_to_the_compute_ratio():
    s = MultiGridSchedule(
        clip_len=32,
        frame_interval=2,
        size=224,
        max_epochs=100,
        milestones=[40, 80])
    # Epoch 0: 128, 64 and 64 clips of 8 frames at 112, 158 and 158 pixels
    # (equal numbers of iterations), against 32x224x224 clips.
    voxels = 128 * 8 * 112**2 + 2 * 64 * 8 * 158**2
    assert s.epoch_compute(0) == pytest.approx(voxels / 256 / (32 * 224**2))
    # Fine-tuning: 4, 2 and 1 clips of 32 frames at 112, 158 and 224.
    assert s.epoch_compute(149) == pytest.approx(
        (4 * 112**2 + 2 * 158**2 + 224**2) / 7 / 224**2)
    total = sum(s.epoch_compute(e) for e in range(150))
    assert total / 100 == pytest.approx(s.compute_ratio())
