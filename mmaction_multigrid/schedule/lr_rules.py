"""Non-step LR schedules (cosine and other closed forms) under multigrid.

Pure Python. A stock ``param_scheduler`` list is turned into *terms*:
JSON-able dicts, one per scheduler, each a closed form of the fractional
epoch. The stock LR factor is the product of the terms (exactly MMEngine's
chained result when the schedulers' windows do not overlap or their
minimum is 0, as in every stock MMAction2 config).

Multigrid rules built on the terms (``docs/schedules.md``):

- *short cycle only*: every term is stretched by ``epoch_factor`` (its
  ``begin``, ``end`` and ``T_max``; integers stay integers via ``int()``),
  PySlowFast's rule;
- *long cycle*: the schedule is split into ``num_long_cycles`` equal phases
  followed by a fine-tuning share, the long cycle repeats over the phases as
  it does over a step schedule's LR stages, and the LR at a multigrid epoch
  is the stock LR at the equivalent stock epoch (piecewise linear, phase by
  phase) times the LR scale of the current base shape's batch multiplier.
"""
import math
from typing import Callable, Dict, List, Sequence, Tuple

# How the LR follows the batch multiplier b of the current base shape.
LR_SCALINGS: Dict[str, Callable[[float], float]] = {
    'linear': lambda b: float(b),  # the reference (linear scaling rule)
    'sqrt': math.sqrt,
    'none': lambda b: 1.0,
}
STEP_TYPES = ('MultiStepLR', 'StepLR')


def _linear(term: dict, k: float, n: float) -> float:
    start = term['start_factor']
    return start + (term['end_factor'] - start) * min(k, n) / n


def _constant(term: dict, k: float, n: float) -> float:
    return term['factor'] if k < n else 1.0


def _cosine(term: dict, k: float, n: float) -> float:
    eta = term['eta_min_ratio']
    return eta + (1 - eta) * (
        1 + math.cos(math.pi * min(k, n) / term['T_max'])) / 2


def _exponential(term: dict, k: float, n: float) -> float:
    return term['gamma']**min(k, n)


def _poly(term: dict, k: float, n: float) -> float:
    eta = term['eta_min_ratio']
    return eta + (1 - eta) * (1 - min(k, n) / n)**term['power']


def _multi_step(term: dict, k: float, n: float) -> float:
    return term['gamma']**sum(m <= k for m in term['milestones'] if m < n)


# name -> (closed form, {parameter: default}); MMEngine 0.10.7 defaults.
CLOSED_FORMS: Dict[str, Tuple[Callable, dict]] = {
    'LinearLR': (_linear, dict(start_factor=1.0 / 3, end_factor=1.0)),
    'ConstantLR': (_constant, dict(factor=1.0 / 3)),
    'CosineAnnealingLR':
    (_cosine, dict(T_max=None, eta_min=None, eta_min_ratio=None)),
    'ExponentialLR': (_exponential, dict(gamma=None)),
    'PolyLR': (_poly, dict(eta_min=0.0, power=1.0)),
    'MultiStepLR': (_multi_step, dict(milestones=None, gamma=0.1)),
    'StepLR': (_multi_step, dict(step_size=None, gamma=0.1)),
}


def is_step_schedule(names: Sequence[str]) -> bool:
    """Whether schedulers named ``names`` follow the reference step rule:
    one ``MultiStepLR``/``StepLR``, optionally after a ``LinearLR``."""
    steps = [n for n in names if n in STEP_TYPES]
    return len(steps) == 1 and all(
        n in STEP_TYPES + ('LinearLR', )
        for n in names) and names.count('LinearLR') <= 1


def scheduler_terms(schedulers: Sequence[dict], max_epochs: int,
                    base_lr: float) -> List[dict]:
    """Closed-form terms of stock epoch-based LR schedulers.

    Args:
        schedulers: ``param_scheduler`` entries whose ``type`` is already a
            class name (str).
        max_epochs: Stock ``train_cfg.max_epochs``; an open ``end`` ends
            there.
        base_lr: The optimizer's LR: absolute ``eta_min`` values become
            ratios of it.

    Returns:
        list[dict]: One term per scheduler: ``type``, ``begin``, ``end``,
        ``per_iter`` (updated every iteration: ``convert_to_iter_based``)
        and the parameters of its closed form.

    Raises:
        ValueError: for a scheduler without a closed form here, or one that
            is not epoch-based.
    """
    terms = []
    for sched in schedulers:
        name = sched['type']
        if name not in CLOSED_FORMS:
            raise ValueError(
                f'multi_grid: param_scheduler {name} has no multigrid rule; '
                f'supported: {sorted(CLOSED_FORMS)} (epoch-based). Replace '
                'it or remove multi_grid.')
        if not sched.get('by_epoch', True):
            raise ValueError(
                f'multi_grid: param_scheduler {name} must be epoch-based '
                '(by_epoch=True; convert_to_iter_based=True is fine).')
        params = dict(CLOSED_FORMS[name][1])
        unknown = set(sched) - set(params) - {
            'type', 'begin', 'end', 'by_epoch', 'convert_to_iter_based',
            'verbose'
        }
        if unknown:
            raise ValueError(f'multi_grid: param_scheduler {name} has '
                             f'settings {sorted(unknown)} it cannot follow.')
        params.update({k: sched[k] for k in params if k in sched})
        begin = sched.get('begin', 0)
        end = min(sched.get('end', max_epochs), max_epochs)
        if end <= begin:
            continue  # never applied within the run
        term = dict(
            type=name,
            begin=begin,
            end=end,
            per_iter=bool(sched.get('convert_to_iter_based', False)))
        if name == 'CosineAnnealingLR':
            ratio = params['eta_min_ratio']
            if ratio is None:
                ratio = (params['eta_min'] or 0.0) / base_lr
            params = dict(
                T_max=params['T_max'] or end - begin, eta_min_ratio=ratio)
        elif name == 'PolyLR':
            params['eta_min_ratio'] = params.pop('eta_min') / base_lr
        elif name == 'StepLR':
            step = params.pop('step_size')
            params['milestones'] = list(
                range(step, math.ceil(end - begin), step))
        missing = sorted(k for k, v in params.items() if v is None)
        if missing:
            raise ValueError(f'multi_grid: param_scheduler {name} needs '
                             f'{missing}.')
        term.update(params)
        terms.append(term)
    if not terms:
        raise ValueError('multi_grid: param_scheduler is empty; it needs an '
                         'LR schedule to adapt.')
    return terms


def term_factor(term: dict, epoch: float) -> float:
    """LR factor of one term at (fractional) stock ``epoch``.

    Before ``begin`` a term leaves the LR alone (1); after ``end`` it keeps
    its final value, as MMEngine's schedulers do.
    """
    if epoch < term['begin']:
        return 1.0
    function = CLOSED_FORMS[term['type']][0]
    return function(term, epoch - term['begin'], term['end'] - term['begin'])


def stock_factor(terms: Sequence[dict],
                 epoch: float,
                 smooth: bool = False) -> float:
    """Stock LR relative to the base LR at fractional ``epoch``.

    Args:
        terms: From :func:`scheduler_terms`.
        epoch: ``epoch + iter / iters_in_epoch``.
        smooth: Evaluate every term at ``epoch``; otherwise terms that
            MMEngine updates once per epoch use ``floor(epoch)``.

    Returns:
        float: The product of the terms' factors.
    """
    factor = 1.0
    for term in terms:
        at = epoch if smooth or term['per_iter'] else math.floor(epoch)
        factor *= term_factor(term, at)
    return factor


def _stretched(value, factor: float):
    scaled = value * factor
    return int(scaled) if isinstance(value, int) else scaled


def stretch(terms: Sequence[dict], factor: float) -> List[dict]:
    """Terms with ``begin``, ``end``, ``T_max`` and milestones times
    ``factor`` (PySlowFast's short-cycle-only rule; ints via ``int()``)."""
    out = []
    for term in terms:
        term = dict(term)
        for key in ('begin', 'end', 'T_max'):
            if key in term:
                term[key] = _stretched(term[key], factor)
        if 'milestones' in term:
            term['milestones'] = [
                _stretched(m, factor) for m in term['milestones']
            ]
        out.append(term)
    return out


def phase_ends(max_epochs: int, num_long_cycles: int,
               fine_tune_share: float) -> List[float]:
    """Stock epochs at which the long-cycle phases end.

    The first ``1 - fine_tune_share`` of the stock run is split into
    ``num_long_cycles`` equal phases; the rest is fine-tuning at the default
    shape. They play the part of a step schedule's milestones.

    Returns:
        list[float]: ``num_long_cycles`` increasing epochs.
    """
    pre = max_epochs * (1 - fine_tune_share)
    return [pre * (i + 1) / num_long_cycles for i in range(num_long_cycles)]


Span = Tuple[float, float, float, float]


def equivalent_epoch(epoch: float, spans: Sequence[Span]) -> float:
    """Stock epoch equivalent to multigrid ``epoch``.

    Args:
        epoch: Fractional multigrid epoch.
        spans: ``(mg_begin, mg_end, stock_begin, stock_end)`` per phase, in
            order, contiguous; each multigrid span maps linearly onto its
            stock span.

    Returns:
        float: The stock epoch (the last stock end past the last span).
    """
    for mg_begin, mg_end, begin, end in spans:
        if epoch < mg_end:
            return begin + (epoch - mg_begin) / (mg_end - mg_begin) * (
                end - begin)
    return spans[-1][3]
