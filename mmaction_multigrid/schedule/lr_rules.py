"""Multigrid LR rules for any stock LR schedule.

Pure Python. The stock schedule itself is MMEngine's: its schedulers are run
on a throw-away optimizer over the stock run's iterations
(:mod:`mmaction_multigrid.engine.stock_lr`). The rules here map a multigrid
epoch to the stock epoch whose LR it takes (``docs/schedules.md``):

- a step schedule (one ``MultiStepLR``/``StepLR``, optionally after a
  ``LinearLR`` warm-up) follows the reference's own rule
  (:class:`~mmaction_multigrid.schedule.cycles.MultiGridSchedule`);
- any other schedule, with long cycles: the stock run is split into
  ``num_long_cycles`` equal phases and a fine-tuning share
  (:func:`phase_ends`), the long cycle repeats over the phases as over a step
  schedule's LR stages, and each phase's multigrid epochs map linearly onto
  its stock epochs (:func:`equivalent_epoch`); the LR is the stock LR there
  times the LR scale of the base shape's batch multiplier
  (:data:`LR_SCALINGS`);
- any other schedule, short cycles only: multigrid epoch ``e`` takes the
  stock LR at ``e / epoch_factor``.
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


def is_step_schedule(names: Sequence[str]) -> bool:
    """Whether schedulers named ``names`` follow the reference step rule:
    one ``MultiStepLR``/``StepLR``, optionally after a ``LinearLR``."""
    steps = [n for n in names if n in STEP_TYPES]
    return len(steps) == 1 and all(
        n in STEP_TYPES + ('LinearLR', )
        for n in names) and names.count('LinearLR') <= 1


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
