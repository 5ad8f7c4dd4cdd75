"""MultiGridLR: the multigrid learning rate (relative step LRs, fine-tuning
half-steps and linear warm-up), updated every iteration."""
import bisect
from itertools import accumulate
from typing import List, Optional, Sequence

from mmaction.registry import PARAM_SCHEDULERS
from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler

from .schedule import MultiGridSchedule


def fractional_epoch(step: int, epoch_lengths: Sequence[int]) -> float:
    """Fractional epoch ``epoch + iter / iters_in_epoch`` of a global step.

    Args:
        step: 0-based global iteration.
        epoch_lengths: Iterations of each epoch.

    Returns:
        float: The fractional epoch; past the end, the epoch count.
    """
    ends = list(accumulate(epoch_lengths))
    epoch = bisect.bisect_right(ends, step)
    if epoch >= len(ends):
        return float(len(ends))
    begin = ends[epoch - 1] if epoch else 0
    return epoch + (step - begin) / epoch_lengths[epoch]


@PARAM_SCHEDULERS.register_module()
class MultiGridLR(LRSchedulerMixin, _ParamScheduler):
    """Learning rate of a multigrid run, set before every iteration.

    ``lr = base_lr * schedule.lr_factor(epoch + iter / iters_in_epoch)``.
    Epoch lengths vary with the long-cycle shape, so the
    :class:`~mmaction_multigrid.hooks.MultiGridHook` gives them to the
    scheduler with :meth:`set_epoch_lengths` before training.

    Args:
        optimizer (Optimizer or OptimWrapper): Wrapped optimizer.
        schedule (dict): Arguments of
            :class:`~mmaction_multigrid.schedule.MultiGridSchedule`.
        begin (int): Must be 0: the multigrid LR spans the whole run.
        end (int, optional): Not used; MMEngine's Runner fills it with an
            iteration count that assumes equal epochs. Defaults to None.
        last_step (int): See ``_ParamScheduler``. Defaults to -1.
        by_epoch (bool): Must be False (updated every iteration).
        verbose (bool): Print every update. Defaults to False.
    """

    def __init__(self,
                 optimizer,
                 schedule: dict,
                 begin: int = 0,
                 end: Optional[int] = None,
                 last_step: int = -1,
                 by_epoch: bool = False,
                 verbose: bool = False) -> None:
        if begin != 0 or by_epoch:
            raise ValueError('MultiGridLR runs every iteration from the '
                             'start: use begin=0 and by_epoch=False.')
        self.schedule = MultiGridSchedule(**schedule)
        self.epoch_lengths: Optional[List[int]] = None
        super().__init__(optimizer, begin=0, end=INF,
                         last_step=last_step, by_epoch=False,
                         verbose=verbose)

    def set_epoch_lengths(self, epoch_lengths: Sequence[int]) -> None:
        """Iterations of every epoch of the run, in order."""
        self.epoch_lengths = list(epoch_lengths)

    def current_epoch(self) -> float:
        """Fractional epoch of the iteration this LR is for."""
        if self.epoch_lengths is None:
            if self.last_step > 0:
                raise RuntimeError(
                    'MultiGridLR needs the epoch lengths; MultiGridHook sets '
                    'them in before_train. Is MultiGridHook in custom_hooks?')
            return 0.0
        return fractional_epoch(self.last_step, self.epoch_lengths)

    def _get_value(self) -> List[float]:
        factor = self.schedule.lr_factor(self.current_epoch())
        return [base * factor for base in self.base_values]

    def state_dict(self) -> dict:
        """Scheduler state without the schedule, which comes from config."""
        state = super().state_dict()
        state.pop('schedule')
        state.pop('epoch_lengths')
        return state
