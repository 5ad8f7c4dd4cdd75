"""Tests of MultiGridLR on a real optimizer, stepped iteration by
iteration as MMEngine's ParamSchedulerHook does."""
import copy

import pytest
import reference as ref
import torch
from conftest import schedule_plan
from mmengine.optim import OptimWrapper

from mmaction_multigrid import MultiGridLR

BASE_LR = 0.1
I3D = dict(
    clip_len=32,
    frame_interval=2,
    size=[224, 224],
    max_epochs=100,
    milestones=[40, 80])
SLOWFAST = dict(
    clip_len=32,
    frame_interval=2,
    size=[224, 224],
    max_epochs=256,
    milestones=[94, 154, 196],
    warmup_epochs=34,
    warmup_start_factor=0.1)
# Reference worked examples: LR change points and relative LRs.
I3D_POINTS = [0, 32, 47, 61, 68, 100, 115, 129, 136, 143]
I3D_REL = [8, 4, 2, 1, .8, .4, .2, .1, .1, .01]
SF_POINTS = [0, 76, 114, 147, 164, 212, 237, 258, 268, 302, 319, 334, 342, 363]
SF_REL = [8, 4, 2, 1, .8, .4, .2, .1, .08, .04, .02, .01, .01, .001]


def _ref_factor(points, rel, epoch, warmup=0, start=0.1):
    """Reference relative LR at fractional ``epoch``."""

    def step(e):
        return rel[max(i for i, p in enumerate(points) if p <= e)]

    if epoch < warmup:
        return start + epoch * (step(warmup) - start) / warmup
    return step(epoch)


@pytest.mark.parametrize('step,lengths,expected', [(0, [4, 2], 0.0),
                                                   (1, [4, 2], 0.25),
                                                   (3, [4, 2], 0.75),
                                                   (4, [4, 2], 1.0),
                                                   (5, [4, 2], 1.5),
                                                   (6, [4, 2], 2.0),
                                                   (60, [4, 2], 2.0),
                                                   (0, [1, 1, 1], 0.0),
                                                   (2, [1, 1, 1], 2.0),
                                                   (7, [3, 5, 2], 1.8),
                                                   (8, [3, 5, 2], 2.0),
                                                   (9, [3, 5, 2], 2.5)])
def test_fractional_epoch(step, lengths, expected):
    assert _plan(I3D,
                 lengths).fractional_epoch(step) == pytest.approx(expected)


@pytest.mark.parametrize('lengths', [[4, 2], [3, 5, 2], [1, 1, 1]])
def test_epoch_position(lengths):
    """Every step maps to its (epoch, iteration) by counting; past the
    end, to (epochs, 0)."""
    steps = [(e, i) for e, n in enumerate(lengths) for i in range(n)]
    steps += [(len(lengths), 0)] * 3
    plan = _plan(I3D, lengths)
    assert [plan.position(k) for k in range(len(steps))] == steps


def _optim():
    model = torch.nn.Linear(2, 1)
    return OptimWrapper(
        torch.optim.SGD(model.parameters(), lr=BASE_LR, momentum=0.9))


def _lengths(num_epochs):
    return [2 + (e % 3) for e in range(num_epochs)]  # 2, 3, 4 iterations


def _plan(schedule, lengths):
    """A step-rule plan of ``schedule`` (MultiGridSchedule arguments) whose
    epochs have ``lengths`` iterations."""
    return schedule_plan(epoch_lengths=lengths, **schedule)


def _run(sched, optim, num_steps):
    lrs = []
    for _ in range(num_steps):
        lrs.append(optim.param_groups[0]['lr'])
        optim.step()
        sched.step()
    return lrs


@pytest.mark.parametrize('schedule,points,rel,warmup', [
    (I3D, I3D_POINTS, I3D_REL, 0),
    (SLOWFAST, SF_POINTS, SF_REL, 34),
])
def test_lr_every_iteration(schedule, points, rel, warmup):
    max_epochs = 150 if schedule is I3D else 384
    lengths = _lengths(max_epochs)
    optim = _optim()
    sched = MultiGridLR(optim, plan=_plan(schedule, lengths))
    lrs = _run(sched, optim, sum(lengths))
    k = 0
    for epoch, n in enumerate(lengths):
        for it in range(n):
            e = epoch + it / n
            expected = BASE_LR * _ref_factor(points, rel, e, warmup)
            assert lrs[k] == pytest.approx(expected, rel=1e-9), (epoch, it)
            k += 1


def test_warmup_is_per_iteration_and_steps_at_epoch_boundaries():
    lengths = _lengths(384)
    optim = _optim()
    sched = MultiGridLR(optim, plan=_plan(SLOWFAST, lengths))
    lrs = _run(sched, optim, sum(lengths))
    starts = [sum(lengths[:e]) for e in range(len(lengths))]
    # Start of warm-up: start_factor * base; inside epoch 0 it grows.
    assert lrs[0] == pytest.approx(0.1 * BASE_LR)
    assert lrs[0] < lrs[1] < lrs[2]
    # Constant within an epoch after warm-up; changes at stage ends only.
    for e in (40, 76, 100, 342, 363):
        window = lrs[starts[e]:starts[e] + lengths[e]]
        assert len(set(window)) == 1
    assert lrs[starts[76] - 1] == pytest.approx(8 * BASE_LR)
    assert lrs[starts[76]] == pytest.approx(4 * BASE_LR)
    # Fine-tuning half-step.
    assert lrs[starts[362]] == pytest.approx(0.01 * BASE_LR)
    assert lrs[starts[363]] == pytest.approx(0.001 * BASE_LR)


def test_state_dict_and_resume():
    lengths = _lengths(384)
    total = sum(lengths)
    half = sum(lengths[:40]) + 1  # inside epoch 40, after warm-up
    early = 7  # inside the warm-up

    ref_optim = _optim()
    ref = MultiGridLR(ref_optim, plan=_plan(SLOWFAST, lengths))
    ref_lrs = _run(ref, ref_optim, total)

    for stop in (early, half):
        optim = _optim()
        sched = MultiGridLR(optim, plan=_plan(SLOWFAST, lengths))
        first = _run(sched, optim, stop)
        state = sched.state_dict()
        assert 'plan' not in state and state['type'] == 'MultiGridLR'
        optim_state = copy.deepcopy(optim.state_dict())
        state = copy.deepcopy(state)

        # Resume in the Runner's order: build optimizer and scheduler, then
        # load the optimizer state and the scheduler state.
        new_optim = _optim()
        new = MultiGridLR(new_optim, plan=_plan(SLOWFAST, lengths))
        new_optim.load_state_dict(optim_state)
        new.load_state_dict(state)
        rest = _run(new, new_optim, total - stop)
        assert first + rest == pytest.approx(ref_lrs, rel=1e-12)


def test_needs_begin_zero_and_iteration_based():
    plan = _plan(I3D, [1] * 150)
    with pytest.raises(ValueError):
        MultiGridLR(_optim(), plan=plan, begin=5)
    with pytest.raises(ValueError):
        MultiGridLR(_optim(), plan=plan, by_epoch=True)


def test_needs_a_plan_with_epoch_lengths():
    with pytest.raises(ValueError, match='plan'):
        MultiGridLR(_optim())
    with pytest.raises(ValueError, match='epoch lengths'):
        MultiGridLR(_optim(), plan=_plan(I3D, []))


def test_scaled_short_cycle_lr_every_iteration():
    """``short_cycle_lr='scaled'``: each iteration's LR is the epoch's
    rule times its short-cycle batch's size over the base shape's."""
    lengths = _lengths(150)
    optim = _optim()
    sched = MultiGridLR(
        optim, plan=_plan(dict(I3D, short_cycle_lr='scaled'), lengths))
    lrs = _run(sched, optim, sum(lengths))
    # The batch sizes from the independent transcription of the reference.
    r2 = 0.5**0.5
    stages = ref.long_cycle(32, (224, 224), 100, [40, 80],
                            ((0.25, r2), (0.5, r2), (0.5, 1), (1, 1)),
                            (0.5, r2), True, 1.5)
    k = 0
    for epoch, n in enumerate(lengths):
        _, base = ref.base_at(stages, epoch)
        sizes = [
            size
            for size, _ in ref.batches(1, base, (224, 224), (0.5, r2), True)
        ]
        for it in range(n):
            expected = BASE_LR * _ref_factor(I3D_POINTS, I3D_REL,
                                             epoch + it / n, 0)
            expected *= sizes[it % 3] / sizes[-1]
            assert lrs[k] == pytest.approx(expected, rel=1e-9), (epoch, it)
            k += 1
