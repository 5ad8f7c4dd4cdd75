"""MultiGridLR: the multigrid learning rate (relative step LRs, fine-tuning
half-steps and linear warm-up), updated every iteration."""
import bisect
from itertools import accumulate
from typing import Callable, List, Optional, Sequence, Tuple, Union

from mmaction.registry import PARAM_SCHEDULERS
from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler

from ..schedule.cycles import MultiGridSchedule


def epoch_position(step: int, epoch_lengths: Sequence[int]) -> Tuple[int, int]:
    """Epoch of a global step and the step's iteration within it.

    Args:
        step: 0-based global iteration.
        epoch_lengths: Iterations of each epoch.

    Returns:
        tuple[int, int]: ``(epoch, iter)``; past the end, ``(epochs, 0)``.
    """
    ends = list(accumulate(epoch_lengths))
    epoch = bisect.bisect_right(ends, step)
    if epoch >= len(ends):
        return len(ends), 0
    return epoch, step - (ends[epoch - 1] if epoch else 0)


def fractional_epoch(step: int, epoch_lengths: Sequence[int]) -> float:
    """Fractional epoch ``epoch + iter / iters_in_epoch`` of a global step.

    Args:
        step: 0-based global iteration.
        epoch_lengths: Iterations of each epoch.

    Returns:
        float: The fractional epoch; past the end, the epoch count.
    """
    epoch, index = epoch_position(step, epoch_lengths)
    if epoch >= len(epoch_lengths):
        return float(epoch)
    return epoch + index / epoch_lengths[epoch]


@PARAM_SCHEDULERS.register_module()
class MultiGridLR(LRSchedulerMixin, _ParamScheduler):
    """Learning rate of a multigrid run, set before every iteration.

    ``lr = base_lr * schedule.lr_factor(epoch_of_step(step))``, times
    ``schedule.batch_lr_factor(epoch, iter)`` of the step's position in its
    epoch when the schedule scales short-cycle batches. Epoch lengths vary
    with the long-cycle shape, so the step-to-epoch mapping comes from the
    train loop: ``MultiGridRunner`` passes the schedule its batch sampler
    built, :meth:`MultiGridTrainLoop.fractional_epoch
    <mmaction_multigrid.engine.loop.MultiGridTrainLoop.fractional_epoch>` and
    :meth:`MultiGridTrainLoop.epoch_position
    <mmaction_multigrid.engine.loop.MultiGridTrainLoop.epoch_position>` when it
    builds this scheduler, so a config only names the type.

    Args:
        optimizer (Optimizer or OptimWrapper): Wrapped optimizer.
        schedule (MultiGridSchedule | dict): The schedule, or the arguments
            of :class:`~mmaction_multigrid.schedule.cycles.MultiGridSchedule`.
        epoch_of_step (Callable[[int], float]): Fractional epoch
            ``epoch + iter / iters_in_epoch`` of a global iteration.
        position_of_step (Callable[[int], tuple[int, int]], optional):
            ``(epoch, iter)`` of a global iteration; needed when the
            schedule's ``short_cycle_lr`` is ``'scaled'``. Defaults to None.
        begin (int): Must be 0: the multigrid LR spans the whole run.
        end (int, optional): Not used; MMEngine's Runner fills it with an
            iteration count that assumes equal epochs. Defaults to None.
        last_step (int): See ``_ParamScheduler``. Defaults to -1.
        by_epoch (bool): Must be False (updated every iteration).
        verbose (bool): Print every update. Defaults to False.
    """

    def __init__(self,
                 optimizer,
                 schedule: Union[MultiGridSchedule, dict, None] = None,
                 epoch_of_step: Optional[Callable[[int], float]] = None,
                 position_of_step: Optional[Callable[[int],
                                                     Tuple[int, int]]] = None,
                 begin: int = 0,
                 end: Optional[int] = None,
                 last_step: int = -1,
                 by_epoch: bool = False,
                 verbose: bool = False,
                 **kwargs) -> None:
        if schedule is None or epoch_of_step is None:
            raise ValueError(
                'MultiGridLR needs `schedule` and `epoch_of_step`; '
                'MultiGridRunner passes them when it builds the scheduler '
                'of a config with `multi_grid`.')
        if begin != 0 or by_epoch:
            raise ValueError('MultiGridLR runs every iteration from the '
                             'start: use begin=0 and by_epoch=False.')
        # MMEngine's Runner passes `epoch_length` to every scheduler it
        # builds; epochs have no single length here.
        kwargs.pop('epoch_length', None)
        if kwargs:
            raise TypeError(f'MultiGridLR got unexpected arguments '
                            f'{sorted(kwargs)}.')
        self.schedule = (
            schedule if isinstance(schedule, MultiGridSchedule) else
            MultiGridSchedule(**schedule))
        if (self.schedule.short_cycle_lr != 'constant'
                and position_of_step is None):
            raise ValueError("MultiGridLR: short_cycle_lr='scaled' needs "
                             '`position_of_step` (MultiGridRunner passes it).')
        self.epoch_of_step = epoch_of_step
        self.position_of_step = position_of_step
        super().__init__(
            optimizer,
            begin=0,
            end=INF,
            last_step=last_step,
            by_epoch=False,
            verbose=verbose)

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

    def _get_value(self) -> List[float]:
        factor = self.schedule.lr_factor(self.epoch_of_step(self.last_step))
        if self.position_of_step is not None:
            factor *= self.schedule.batch_lr_factor(
                *self.position_of_step(self.last_step))
        return [base * factor for base in self.base_values]

    def state_dict(self) -> dict:
        """Scheduler state without the schedule and the epoch mapping, which
        come from the config and the train loop."""
        state = super().state_dict()
        for key in ('schedule', 'epoch_of_step', 'position_of_step'):
            state.pop(key, None)
        state['type'] = type(self).__name__
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state from :meth:`state_dict`.

        The state of another scheduler (MMEngine pairs schedulers by
        position, so a checkpoint written without multigrid hands over its
        ``MultiStepLR``/``LinearLR`` state) is ignored: its step count and
        settings do not apply. The train loop then continues the schedule at
        the resumed iteration with :meth:`start_at`.
        """
        state = dict(state_dict)
        if state.pop('type', None) != type(self).__name__:
            return
        super().load_state_dict(state)
