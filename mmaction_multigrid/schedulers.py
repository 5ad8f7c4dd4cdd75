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
        self.first_epoch = 0
        self.first_step = 0
        super().__init__(optimizer, begin=0, end=INF,
                         last_step=last_step, by_epoch=False,
                         verbose=verbose)

    def set_epoch_lengths(self, epoch_lengths: Sequence[int],
                          first_epoch: int = 0, first_step: int = 0) -> None:
        """Iterations of every epoch of the run, in order.

        Args:
            epoch_lengths: Iterations of each epoch.
            first_epoch: Epoch the run (re)starts at. Defaults to 0.
            first_step: Global iteration at which ``first_epoch`` starts.
                It differs from ``sum(epoch_lengths[:first_epoch])`` when a
                run resumes a checkpoint written with another number of GPUs
                or without multigrid. Defaults to 0.
        """
        self.epoch_lengths = list(epoch_lengths)
        self.first_epoch = first_epoch
        self.first_step = first_step

    def start_at(self, step: int) -> None:
        """Continue the schedule at global iteration ``step``.

        Sets the step count and the optimizer's LR for ``step``. Resuming a
        checkpoint of the same run, this recomputes the values it holds; a
        checkpoint written without multigrid or with other settings gets the
        LR of the current schedule.

        Args:
            step: The resumed ``runner.iter`` (0 for a fresh run).
        """
        self.last_step = step
        values = self._get_value()
        for group, value in zip(self.optimizer.param_groups, values):
            group[self.param_name] = value
        self._last_value = values

    def current_epoch(self) -> float:
        """Fractional epoch of the iteration this LR is for."""
        if self.epoch_lengths is None:
            if self.last_step > 0:
                raise RuntimeError(
                    'MultiGridLR needs the epoch lengths; MultiGridHook sets '
                    'them in before_train. Is MultiGridHook in custom_hooks?')
            return 0.0
        step = self.last_step - self.first_step
        return self.first_epoch + fractional_epoch(
            step, self.epoch_lengths[self.first_epoch:])

    def _get_value(self) -> List[float]:
        factor = self.schedule.lr_factor(self.current_epoch())
        return [base * factor for base in self.base_values]

    def state_dict(self) -> dict:
        """Scheduler state without the schedule, which comes from config."""
        state = super().state_dict()
        for key in ('schedule', 'epoch_lengths', 'first_epoch',
                    'first_step'):
            state.pop(key, None)
        state['type'] = type(self).__name__
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state from :meth:`state_dict`.

        The state of another scheduler (MMEngine pairs schedulers by
        position, so a checkpoint written without multigrid hands over its
        ``MultiStepLR``/``LinearLR`` state) is ignored: its step count and
        settings do not apply. :class:`~mmaction_multigrid.hooks.
        MultiGridHook` then continues the schedule at the resumed iteration
        with :meth:`start_at`.
        """
        state = dict(state_dict)
        if state.pop('type', None) != type(self).__name__:
            return
        super().load_state_dict(state)
