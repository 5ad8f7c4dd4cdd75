"""The stock LR schedule, as MMEngine's own schedulers give it.

The config's ``param_scheduler`` is built with MMEngine's classes on a
throw-away one-parameter optimizer and stepped as ``ParamSchedulerHook``
steps it in a stock run (iteration-based schedulers after every iteration,
epoch-based ones after every epoch), over the stock run's iterations. So
every scheduler MMEngine can step without metrics is followed exactly,
overlapping windows and ``convert_to_iter_based`` included.
"""
import copy
import warnings
from typing import List, Sequence

import torch
from mmaction.registry import PARAM_SCHEDULERS

from ..schedule.plan import StockLR


def _build(schedulers: Sequence[dict], optimizer: torch.optim.Optimizer,
           max_epochs: int, iters_per_epoch: int) -> list:
    """Build ``schedulers`` as MMEngine 0.10.7's ``Runner`` does: an open
    ``end`` is the run's last epoch (or iteration) and epoch-based
    schedulers get ``epoch_length`` for ``convert_to_iter_based``."""
    built = []
    for cfg in schedulers:
        cfg = copy.deepcopy(dict(cfg))
        cfg.setdefault(
            'end', max_epochs if cfg.get('by_epoch', True) else max_epochs *
            iters_per_epoch)
        built.append(
            PARAM_SCHEDULERS.build(
                cfg,
                default_args=dict(
                    optimizer=optimizer, epoch_length=iters_per_epoch)))
    return built


def stock_lr(schedulers: Sequence[dict], max_epochs: int, iters_per_epoch: int,
             base_lr: float) -> StockLR:
    """Run the stock LR schedulers over a stock run and record the LR.

    Args:
        schedulers: The stock config's ``param_scheduler`` entries.
        max_epochs: Stock ``train_cfg.max_epochs``.
        iters_per_epoch: Iterations of a stock epoch (per rank).
        base_lr: The optimizer's LR.

    Returns:
        StockLR: The LR of every stock iteration relative to ``base_lr``.
    """
    param = torch.nn.Parameter(torch.zeros(1))
    # Momentum lets OneCycleLR schedule it, as it would in the stock run.
    optimizer = torch.optim.SGD([param], lr=base_lr, momentum=0.9)
    with warnings.catch_warnings():
        # MMEngine warns that the scheduler steps without optimizer steps.
        warnings.simplefilter('ignore', UserWarning)
        built = _build(schedulers, optimizer, max_epochs, iters_per_epoch)
        per_iter = [s for s in built if not s.by_epoch]
        per_epoch = [s for s in built if s.by_epoch]
        # Once no iteration-based window is left, nothing changes the LR
        # within an epoch: its iterations need no steps.
        last_end = max((s.end for s in per_iter), default=0)
        points: List[int] = []
        values: List[float] = []

        def record(step: int) -> None:
            value = optimizer.param_groups[0]['lr'] / base_lr
            if not values or value != values[-1]:
                points.append(step)
                values.append(value)

        for epoch in range(max_epochs):
            for index in range(iters_per_epoch):
                step = epoch * iters_per_epoch + index
                record(step)
                if step + 1 >= last_end:
                    break
                for scheduler in per_iter:
                    scheduler.step()
            for scheduler in per_epoch:
                scheduler.step()
    return StockLR(tuple(points), tuple(values), iters_per_epoch)
