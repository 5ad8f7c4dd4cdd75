"""A test hook that records what the model actually receives in training.

Registered as ``InputRecorder``; add it to ``custom_hooks`` (and this module
to ``custom_imports``). For every training forward of the backbone it stores
epoch, iteration in the epoch, input shape and the optimizer's LR, and writes
them to ``<work_dir>/inputs.json`` after training.
"""
import json
import os.path as osp

from mmaction.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper


@HOOKS.register_module(force=True)
class InputRecorder(Hook):
    """Record (epoch, iter, shape, lr) of every training forward."""

    def before_train(self, runner) -> None:
        self.records = []
        self.epoch_iter = [0, 0]
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model

        def pre_hook(module, args):
            if module.training:
                self.records.append(
                    dict(
                        epoch=runner.epoch,
                        iter=self.epoch_iter[1],
                        shape=list(args[0].shape),
                        lr=runner.optim_wrapper.param_groups[0]['lr']))

        model.backbone.register_forward_pre_hook(pre_hook)

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.epoch_iter = [runner.epoch, batch_idx]

    def after_train_epoch(self, runner) -> None:
        # Written every epoch so a killed run still leaves its records.
        with open(osp.join(runner.work_dir, 'inputs.json'), 'w') as f:
            json.dump(self.records, f)
