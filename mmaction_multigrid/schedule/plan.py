"""The plan of a multigrid run: one immutable object that every run-time
piece reads.

Pure Python. :func:`mmaction_multigrid.engine.plan.build_plan` makes it from a
config; ``MultiGridRunner`` passes it down to the batch sampler, the train
loop, ``MultiGridLR`` and the hooks.
"""
import bisect
import dataclasses
import math
from dataclasses import dataclass, field
from itertools import accumulate
from typing import List, Optional, Tuple

from .cycles import MultiGridSchedule
from .options import MultiGridOptions


@dataclass(frozen=True)
class StockLR:
    """The stock run's LR, relative to its base LR, at every iteration.

    Kept as change points: ``values[k]`` holds from iteration ``points[k]``
    until the next point.

    Attributes:
        points: Increasing stock iterations, the first 0.
        values: The LR factor from each point on.
        iters_per_epoch: Iterations of a stock epoch.
    """
    points: Tuple[int, ...]
    values: Tuple[float, ...]
    iters_per_epoch: int

    def at_iter(self, step: int) -> float:
        """LR factor of stock iteration ``step`` (the last one past the
        end)."""
        return self.values[bisect.bisect_right(self.points, step) - 1]

    def at_epoch(self, epoch: float) -> float:
        """LR factor of the stock iteration at fractional ``epoch``: the
        one it falls in (an ``epoch`` a rounding error short of an
        iteration's start counts as that iteration)."""
        return self.at_iter(math.floor(epoch * self.iters_per_epoch + 1e-9))


@dataclass(frozen=True)
class MultiGridPlan:
    """Options, schedule and (once the sample count is known) the epoch
    lengths and the stock LR of one multigrid run.

    Immutable: a deep copy is the plan itself, so configs that carry it
    (MMEngine deep-copies them) share one plan.

    Attributes:
        options: The checked ``multi_grid`` options, resolved.
        schedule: Shapes, stages and the step rule.
        stock: What the plan was built from: the stock recipe's settings
            (clip, size, epochs, batch, LR schedule), JSON-able.
        drop_last: Whether an incomplete last batch is dropped.
        stock_lr: The stock schedule as MMEngine's schedulers give it (any
            schedule but a step one; None for a step schedule).
        num_samples: Samples per rank and epoch; None before the train
            loader exists.
        epoch_lengths: Iterations of each multigrid epoch (empty before
            ``num_samples`` is known).
        epoch_ends: Iterations up to the end of each epoch (their running
            sum, kept for the per-iteration lookups).
    """
    options: MultiGridOptions
    schedule: MultiGridSchedule
    stock: dict
    drop_last: bool = True
    stock_lr: Optional[StockLR] = None
    num_samples: Optional[int] = None
    epoch_lengths: Tuple[int, ...] = ()
    epoch_ends: Tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'epoch_ends',
                           tuple(accumulate(self.epoch_lengths)))

    def __deepcopy__(self, memo: dict) -> 'MultiGridPlan':
        return self

    def with_samples(self, num_samples: int,
                     stock_lr: Optional[StockLR]) -> 'MultiGridPlan':
        """This plan for ``num_samples`` samples per rank and epoch.

        Args:
            num_samples: Samples the per-rank sampler yields per epoch.
            stock_lr: The stock LR at that many samples (None for a step
                schedule).

        Returns:
            MultiGridPlan: A new plan with the epoch lengths.
        """
        lengths = tuple(
            self.schedule.num_batches(e, num_samples, self.drop_last)
            for e in range(self.schedule.max_epochs))
        return dataclasses.replace(
            self,
            num_samples=num_samples,
            stock_lr=stock_lr,
            epoch_lengths=lengths)

    def settings(self) -> dict:
        """What a checkpoint records to tell whether a resumed run has the
        same plan: the options and (as ``stock.KEY``) the stock recipe, one
        flat, JSON-able dict."""
        stock = {f'stock.{k}': v for k, v in self.stock.items()}
        return dict(self.options.to_dict(), **stock)

    # ------------------------------------------------------ iterations --
    def steps_before(self, epoch: int) -> int:
        """Iterations of the epochs before ``epoch``."""
        return sum(self.epoch_lengths[:epoch])

    def position(self, step: int) -> Tuple[int, int]:
        """Epoch of iteration ``step`` of the run and its index in it.

        Args:
            step: 0-based iteration counted from the start of the run.

        Returns:
            tuple[int, int]: ``(epoch, iter)``; past the end,
            ``(epochs, 0)``.
        """
        ends = self.epoch_ends
        epoch = bisect.bisect_right(ends, step)
        if epoch >= len(ends):
            return len(ends), 0
        return epoch, step - (ends[epoch - 1] if epoch else 0)

    def fractional_epoch(self, step: int) -> float:
        """``epoch + iter / iters_in_epoch`` of iteration ``step``."""
        return self._fraction(*self.position(step))

    def _fraction(self, epoch: int, index: int) -> float:
        """``epoch + index / iters_in_epoch`` (the epoch count past the
        end)."""
        if epoch >= len(self.epoch_lengths):
            return float(epoch)
        return epoch + index / self.epoch_lengths[epoch]

    # -------------------------------------------------------------- LR --
    def epoch_lr_factor(self, epoch: float) -> float:
        """LR at fractional multigrid ``epoch`` relative to the stock base
        LR, before the short cycle's batch factor.

        A step schedule follows the reference rule
        (:meth:`MultiGridSchedule.lr_factor`); any other takes the stock LR
        at the equivalent stock epoch
        (:meth:`MultiGridSchedule.equivalent_stock_epoch`), times the LR
        scale of the base shape's batch multiplier with long cycles.
        """
        if self.stock_lr is None:
            return self.schedule.lr_factor(epoch)
        factor = self.stock_lr.at_epoch(
            self.schedule.equivalent_stock_epoch(epoch))
        if self.schedule.long_cycle:
            factor *= self.schedule.lr_scale(epoch)
        return factor

    def lr_factor(self, step: int) -> float:
        """LR of iteration ``step`` relative to the stock base LR."""
        epoch, index = self.position(step)
        return (self.epoch_lr_factor(self._fraction(epoch, index)) *
                self.schedule.batch_lr_factor(epoch, index))

    def stock_lr_factor(self, epoch: float) -> float:
        """The stock run's LR at its own fractional ``epoch``, relative to
        its base LR."""
        if self.stock_lr is None:
            return self.schedule.stock_lr_factor(epoch)
        return self.stock_lr.at_epoch(epoch)

    def describe(self, base_lr: Optional[float] = None) -> List[dict]:
        """:meth:`MultiGridSchedule.describe` with each stage's LR at its
        first epoch (after the warm-up for a step schedule).

        Args:
            base_lr: Stock LR; rows give relative LRs when None.
        """
        rows = self.schedule.describe()
        for row in rows:
            factor = (
                self.schedule.step_factor(row['begin']) if self.stock_lr
                is None else self.epoch_lr_factor(row['begin']))
            row['lr'] = factor * (base_lr or 1.0)
        return rows
