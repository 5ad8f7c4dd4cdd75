"""The plan of a multigrid run, from its config.

:func:`build_plan` is the one place where a
:class:`~mmaction_multigrid.schedule.cycles.MultiGridSchedule` is made: the
conversion, ``MultiGridRunner`` and the tools all get theirs from it.
:func:`plan_for_samples` completes a plan once the per-rank sample count is
known.
"""
import dataclasses
import math
from typing import List, Optional

from ..datasets.pipeline import check_format, clip_params, output_size
from ..datasets.walk import leaf_datasets
from ..schedule.cycles import MultiGridSchedule
from ..schedule.lr_rules import is_step_schedule
from ..schedule.options import MultiGridOptions, check_count
from ..schedule.plan import MultiGridPlan
from .stock_lr import stock_lr

# The key under which a converted config keeps what the stock config had
# and the conversion replaced: its epochs and its LR schedulers.
STOCK_KEY = 'multi_grid_stock'
# Stock iterations per epoch of a plan made before the sample count is
# known: fractional scheduler ends (Swin's end=0.5 epoch) still fall on one.
PROVISIONAL_ITERS = 100


def type_name(value) -> str:
    """Registered name of a config ``type``: a string (a scope prefix such
    as ``'mmengine.'`` dropped) or, in pure-Python configs, the class or
    function itself."""
    if isinstance(value, str):
        return value.rsplit('.', 1)[-1]
    return getattr(value, '__name__', str(value))


def stock_schedulers(schedulers) -> List[dict]:
    """``param_scheduler`` as a list of dicts with class names as ``type``.

    Raises:
        ValueError: for a scheduler of another parameter than the LR, and
            for ``ReduceOnPlateauLR`` (it needs validation metrics).
    """
    if isinstance(schedulers, dict):
        schedulers = [schedulers]
    out = []
    for sched in schedulers or []:
        sched = dict(sched, type=type_name(sched.get('type')))
        if not sched['type'].endswith('LR'):
            raise ValueError(
                f'multi_grid: param_scheduler {sched["type"]} schedules '
                'something other than the LR; multigrid replaces the '
                'schedulers, so it supports LR schedulers only.')
        if sched['type'] == 'ReduceOnPlateauLR':
            raise ValueError(
                'multi_grid: param_scheduler ReduceOnPlateauLR follows '
                'validation metrics, which a multigrid run cannot map onto '
                'the stock run; use a schedule of epochs or iterations.')
        out.append(sched)
    if not out:
        raise ValueError('multi_grid: param_scheduler is empty; it needs an '
                         'LR schedule to adapt.')
    return out


def _step_rule(schedulers: List[dict], max_epochs: int) -> Optional[dict]:
    """Arguments of the reference step rule, or None when the schedule is
    not one it follows exactly: one epoch-based ``MultiStepLR``/``StepLR``
    with a milestone inside the run, optionally after an epoch-based
    ``LinearLR`` warm-up from epoch 0 to factor 1."""
    if not is_step_schedule([s['type'] for s in schedulers]):
        return None
    steps = next(s for s in schedulers if s['type'] != 'LinearLR')
    warmup = next((s for s in schedulers if s['type'] == 'LinearLR'), None)
    if not steps.get('by_epoch', True) or steps.get('convert_to_iter_based'):
        return None
    begin = steps.get('begin', 0)
    end = min(steps.get('end', max_epochs), max_epochs)
    if steps['type'] == 'StepLR':
        relative = range(steps['step_size'], end - begin, steps['step_size'])
    else:
        relative = steps['milestones']
    milestones = [begin + m for m in relative if 0 < begin + m < end]
    if not milestones:
        return None
    rule = dict(
        milestones=milestones,
        gamma=steps.get('gamma', 0.1),
        warmup_epochs=0,
        warmup_start_factor=0.1)
    if warmup is not None:
        if (not warmup.get('by_epoch', True) or warmup.get('begin', 0) != 0
                or warmup.get('end_factor', 1.0) != 1.0):
            return None
        rule.update(
            warmup_epochs=warmup['end'],
            warmup_start_factor=warmup.get('start_factor', 1.0 / 3))
    return rule


def _stock_recipe(cfg: dict) -> dict:
    """What the plan needs from the stock config, JSON-able.

    Reads a stock config, or a converted one (whose train dataset is the
    wrapped stock dataset and whose ``multi_grid_stock`` keeps the stock
    epochs and LR schedulers).

    Raises:
        ValueError: naming the key and the fix.
    """
    converted = STOCK_KEY in cfg
    train_cfg = cfg.get('train_cfg') or {}
    loop = type_name(train_cfg.get('type', 'EpochBasedTrainLoop'))
    if ('max_epochs' not in train_cfg
            or loop not in ('EpochBasedTrainLoop', 'MultiGridTrainLoop')
            or not train_cfg.get('by_epoch', True)):
        raise ValueError('multi_grid needs epoch-based training with one '
                         f'train loader (train_cfg has type {loop}): set '
                         'train_cfg=dict(type="EpochBasedTrainLoop", '
                         'max_epochs=...).')
    loader = cfg['train_dataloader']
    dataset = loader['dataset']['dataset'] if converted else loader['dataset']
    pipelines = [leaf.get('pipeline') for leaf in leaf_datasets(dataset)]
    if any(p is None for p in pipelines):
        raise ValueError('multi_grid: a train dataset has no `pipeline`.')
    first = pipelines[0]
    for pipeline in pipelines:
        check_format(pipeline)
        if (clip_params(pipeline),
                output_size(pipeline)) != (clip_params(first),
                                           output_size(first)):
            raise ValueError(
                'multi_grid: the train datasets have pipelines of different '
                'clip shapes; multigrid needs one default shape.')
    check_count('train_dataloader.batch_size', loader.get('batch_size'))
    clip_len, interval = clip_params(first)
    stock = cfg[STOCK_KEY] if converted else dict(
        max_epochs=train_cfg['max_epochs'],
        param_scheduler=stock_schedulers(cfg.get('param_scheduler')))
    optimizer = (cfg.get('optim_wrapper') or {}).get('optimizer') or {}
    return dict(
        clip_len=clip_len,
        frame_interval=interval,
        size=list(output_size(first)),
        batch_size=loader['batch_size'],
        base_lr=optimizer.get('lr'),
        max_epochs=stock['max_epochs'],
        param_scheduler=[dict(s) for s in stock['param_scheduler']])


def _resolve(options: MultiGridOptions, recipe: dict,
             step_rule: bool) -> MultiGridOptions:
    """Options with ``default_s``, ``bn_base_size`` and ``short_cycle_lr``
    resolved from the stock recipe.

    Raises:
        ValueError: when ``default_s`` differs from the pipeline's size.
    """
    size = tuple(recipe['size'])
    given = options.default_s
    if given is not None and (tuple(given) if isinstance(given, tuple) else
                              (given, given)) != size:
        raise ValueError(
            f'multi_grid.default_s: {given!r} differs from the train '
            f'pipeline output size {size} (height, width); make them equal '
            'or leave default_s out.')
    bn = options.bn_base_size
    return dataclasses.replace(
        options,
        default_s=size,
        bn_base_size=recipe['batch_size'] if bn == 'auto' else bn,
        short_cycle_lr=options.short_cycle_lr
        or ('constant' if step_rule else 'scaled'))


def build_plan(cfg) -> MultiGridPlan:
    """The plan of a config with ``multi_grid`` (stock or converted).

    Without a sample count the stock LR of a non-step schedule is recorded
    at ``PROVISIONAL_ITERS`` iterations per epoch (enough to check the
    schedulers and to describe the plan); :func:`plan_for_samples` records
    it at the run's own.

    Args:
        cfg (dict | Config): The config.

    Returns:
        MultiGridPlan: Options, schedule and stock recipe; no epoch lengths.

    Raises:
        ValueError: naming the config key and the fix.
    """
    options = MultiGridOptions.from_dict(dict(cfg['multi_grid']))
    recipe = _stock_recipe(cfg)
    rule = _step_rule(recipe['param_scheduler'], recipe['max_epochs'])
    options = _resolve(options, recipe, rule is not None)
    if rule is None and recipe['base_lr'] is None:
        raise ValueError('multi_grid: optim_wrapper.optimizer.lr is needed '
                         'to follow a non-step LR schedule.')
    schedule = MultiGridSchedule(
        clip_len=recipe['clip_len'],
        frame_interval=recipe['frame_interval'],
        size=recipe['size'],
        max_epochs=recipe['max_epochs'],
        batch_size=recipe['batch_size'],
        **(rule or dict(milestones=[])),
        long_cycle=options.long_cycle,
        short_cycle=options.short_cycle,
        long_cycle_factors=options.long_cycle_factors,
        short_cycle_factors=options.short_cycle_factors,
        epoch_factor=options.epoch_factor,
        num_long_cycles=options.num_long_cycles,
        fine_tune_share=options.fine_tune_share,
        lr_scaling=options.lr_scaling,
        short_cycle_lr=options.short_cycle_lr)
    batch_sampler = cfg['train_dataloader'].get('batch_sampler') or {}
    drop_last = batch_sampler.get(
        'drop_last', cfg['train_dataloader'].get('drop_last', True))
    plan = MultiGridPlan(
        options=options, schedule=schedule, stock=recipe, drop_last=drop_last)
    return dataclasses.replace(
        plan, stock_lr=_stock_lr(plan, PROVISIONAL_ITERS))


def _stock_lr(plan: MultiGridPlan, iters_per_epoch: int):
    """The stock LR over ``iters_per_epoch`` stock iterations per epoch;
    None for a step schedule (the reference rule needs none)."""
    if plan.schedule.step_rule:
        return None
    recipe = plan.stock
    try:
        return stock_lr(recipe['param_scheduler'], recipe['max_epochs'],
                        iters_per_epoch, recipe['base_lr'])
    except (KeyError, TypeError, ValueError, AssertionError) as error:
        raise ValueError(
            f'multi_grid: MMEngine cannot build the stock param_scheduler '
            f'{recipe["param_scheduler"]}: {error}') from error


def plan_for_samples(plan: MultiGridPlan, num_samples: int) -> MultiGridPlan:
    """``plan`` with the epoch lengths of ``num_samples`` samples per rank,
    and the stock LR recorded per stock iteration.

    The stock run has ``num_samples / batch_size`` iterations per epoch
    (rounded down with ``drop_last``, up without), as its loader would.

    Args:
        plan: From :func:`build_plan`.
        num_samples: Samples the per-rank sampler yields per epoch.

    Returns:
        MultiGridPlan: The completed plan.
    """
    batch = plan.schedule.batch_size
    iters = (
        num_samples // batch if plan.drop_last else math.ceil(num_samples /
                                                              batch))
    return plan.with_samples(num_samples, _stock_lr(plan, max(iters, 1)))
