"""The stock LR of every iteration as MMEngine itself gives it: the oracle
for non-step schedules.

The schedulers are built by MMEngine's own ``Runner._build_param_scheduler``
(its defaults for ``end`` and ``epoch_length``) and stepped by MMEngine's own
``ParamSchedulerHook``, on a stand-in for the Runner that has only what
those two read. Nothing here comes from the package under test.
"""
import types
import warnings

import torch
from mmengine.hooks import ParamSchedulerHook
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper
from mmengine.runner import Runner
from mmengine.runner.base_loop import BaseLoop


class _Loop(BaseLoop):
    """A train loop that is never run: ``_build_param_scheduler`` only asks
    whether one is built."""

    def run(self):
        raise NotImplementedError


def stock_lrs(schedulers, max_epochs, iters_per_epoch, base_lr=1.0):
    """LR of each iteration of a stock run, relative to ``base_lr``.

    Args:
        schedulers (list[dict]): The stock ``param_scheduler``.
        max_epochs (int): Stock ``train_cfg.max_epochs``.
        iters_per_epoch (int): Iterations of a stock epoch.
        base_lr (float): The optimizer's LR.

    Returns:
        list[float]: ``max_epochs * iters_per_epoch`` factors, the LR each
        iteration trains with, over ``base_lr``.
    """
    model = torch.nn.Linear(1, 1)
    optim = OptimWrapper(
        torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.9))
    runner = types.SimpleNamespace(
        max_epochs=max_epochs,
        max_iters=max_epochs * iters_per_epoch,
        train_dataloader=range(iters_per_epoch),
        logger=MMLogger.get_current_instance())
    runner._train_loop = _Loop(runner, range(iters_per_epoch))
    hook = ParamSchedulerHook()
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        runner.param_schedulers = Runner._build_param_scheduler(
            runner, [dict(s) for s in schedulers], optim)
        for _ in range(max_epochs):
            for i in range(iters_per_epoch):
                lrs.append(optim.param_groups[0]['lr'] / base_lr)
                optim.step()
                hook.after_train_iter(runner, i)
            hook.after_train_epoch(runner)
    return lrs
