"""MultiGridLR: the LR of a multigrid run, set before every iteration."""
from typing import List, Optional

from mmaction.registry import PARAM_SCHEDULERS
from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler

from ..schedule.plan import MultiGridPlan


@PARAM_SCHEDULERS.register_module()
class MultiGridLR(LRSchedulerMixin, _ParamScheduler):
    """Learning rate of a multigrid run, set before every iteration.

    ``lr = base_lr * plan.lr_factor(step)`` where ``step`` counts the
    iterations of the plan (:meth:`MultiGridPlan.lr_factor
    <mmaction_multigrid.schedule.plan.MultiGridPlan.lr_factor>`).
    ``MultiGridRunner`` passes its plan when it builds the scheduler, so a
    config only names the type.

    Args:
        optimizer (Optimizer or OptimWrapper): Wrapped optimizer.
        plan (MultiGridPlan): The run's plan, with epoch lengths.
        begin (int): Must be 0: the multigrid LR spans the whole run.
        end (int, optional): Not used; MMEngine's Runner fills it with an
            iteration count that assumes equal epochs. Defaults to None.
        last_step (int): See ``_ParamScheduler``. Defaults to -1.
        by_epoch (bool): Must be False (updated every iteration).
        verbose (bool): Print every update. Defaults to False.
    """

    def __init__(self,
                 optimizer,
                 plan: Optional[MultiGridPlan] = None,
                 begin: int = 0,
                 end: Optional[int] = None,
                 last_step: int = -1,
                 by_epoch: bool = False,
                 verbose: bool = False,
                 **kwargs) -> None:
        if plan is None or not plan.epoch_lengths:
            raise ValueError(
                'MultiGridLR needs the plan of the run with its epoch '
                'lengths; MultiGridRunner passes it when it builds the '
                'scheduler of a config with `multi_grid`.')
        if begin != 0 or by_epoch:
            raise ValueError('MultiGridLR runs every iteration from the '
                             'start: use begin=0 and by_epoch=False.')
        # MMEngine's Runner passes `epoch_length` to every scheduler it
        # builds; epochs have no single length here.
        kwargs.pop('epoch_length', None)
        if kwargs:
            raise TypeError(f'MultiGridLR got unexpected arguments '
                            f'{sorted(kwargs)}.')
        self.plan = plan
        super().__init__(
            optimizer,
            begin=0,
            end=INF,
            last_step=last_step,
            by_epoch=False,
            verbose=verbose)

    def _get_value(self) -> List[float]:
        factor = self.plan.lr_factor(self.last_step)
        return [base * factor for base in self.base_values]

    def state_dict(self) -> dict:
        """Scheduler state without the plan, which comes from the config."""
        state = super().state_dict()
        state.pop('plan', None)
        state['type'] = type(self).__name__
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state from :meth:`state_dict`.

        The state of another scheduler (MMEngine pairs schedulers by
        position, so a checkpoint written without multigrid hands over its
        ``MultiStepLR``/``LinearLR`` state) is ignored: its step count and
        settings do not apply; ``MultiGridRunner.resume`` then loads the
        state of the plan's step at the resumed epoch.
        """
        state = dict(state_dict)
        if state.pop('type', None) != type(self).__name__:
            return
        super().load_state_dict(state)
