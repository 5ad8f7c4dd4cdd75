"""Precise BatchNorm: recompute BN running statistics over many batches.

The running statistics collected during training are an exponential average
over weights that kept changing. Before evaluation, multigrid training (like
PySlowFast) replaces them with an exact average over a number of batches run
through the current weights. :func:`update_bn_stats` does it for any model;
:class:`PreciseBNHook` decides when, in a multigrid run.
"""
import bisect
import itertools
import logging
import math
import time
from types import SimpleNamespace
from typing import Any, Callable, Iterable, List, Optional

import torch
import torch.nn as nn
from mmaction.registry import HOOKS
from mmengine.dataset import DefaultSampler
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from ..datasets.rng import preserved_rng
from ..models.sub_batch_bn import is_sub_batch_bn, set_splits
from ..schedule.options import check_count


def _bn_layers(model: nn.Module) -> List[_BatchNorm]:
    """BN layers whose statistics precise BN should recompute."""
    layers = [
        m for m in model.modules()
        if isinstance(m, _BatchNorm) and m.running_mean is not None
    ]
    if model.training:
        # In a model in training mode, a BN layer in eval mode is frozen
        # (``norm_eval`` / ``frozen_stages``): keep its statistics.
        layers = [m for m in layers if m.training]
    return layers


def update_bn_stats(model: nn.Module,
                    batches: Iterable,
                    num_iters: int,
                    forward: Optional[Callable[[Any], Any]] = None) -> int:
    """Recompute BN running statistics as an exact average over batches.

    Every BatchNorm layer with running statistics (including
    :class:`~mmaction_multigrid.models.sub_batch_bn.SubBatchNorm3d`) is
    updated, except, when
    ``model`` is in training mode, the BN layers that are in eval mode
    (frozen). Up to ``num_iters`` batches are run through ``forward`` under
    ``torch.no_grad()`` with the BN layers in training mode. After each batch
    the layer's running statistics (taken with momentum 1, i.e. that batch's
    statistics) are accumulated, and the final ``running_mean`` /
    ``running_var`` are their plain average over the batches. As with
    ``momentum=None`` in PyTorch (and in fvcore / mmpretrain precise BN),
    ``running_var`` is the average of the per-batch *unbiased* variances, not
    the variance of the whole set. For a sub-batch layer, each batch
    contributes its aggregated group statistics, and its per-group statistics
    are reset afterwards.

    The BN layers' momentum, training flag and ``num_batches_tracked`` are
    restored. If ``torch.distributed`` is initialised with more than one
    process, the statistics are then averaged across processes, so every
    process must call this function.

    Args:
        model (nn.Module): The model whose BN layers are updated. If it is
            wrapped (e.g. by DDP), pass the wrapper's ``module`` and a
            matching ``forward``.
        batches (Iterable): Batches, e.g. a data loader.
        num_iters (int): Number of batches to use.
        forward (Callable, optional): Runs one batch through the model.
            Defaults to None, meaning ``model(batch)``.

    Returns:
        int: Number of batches used, which is less than ``num_iters`` if
        ``batches`` ran out.
    """
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or \
            num_iters < 1:
        raise ValueError(f'num_iters must be an integer >= 1, got '
                         f'{num_iters!r}')
    if forward is None:
        forward = model
    layers = _bn_layers(model)
    saved = [(m.momentum, m.training, m.num_batches_tracked.clone()
              if m.num_batches_tracked is not None else None) for m in layers]
    means = [torch.zeros_like(m.running_mean) for m in layers]
    variances = [torch.zeros_like(m.running_var) for m in layers]

    used = 0
    try:
        for m in layers:
            m.momentum = 1.0  # running stats := this batch's statistics
            m.train()
        with torch.no_grad():
            for batch in itertools.islice(batches, num_iters):
                forward(batch)
                used += 1
                for m, mean, var in zip(layers, means, variances):
                    mean += (m.running_mean - mean) / used
                    var += (m.running_var - var) / used
    finally:
        for m, (momentum, training, tracked) in zip(layers, saved):
            m.momentum = momentum
            m.train(training)
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)

    if used < num_iters:
        print_log(
            f'Precise BN: asked for {num_iters} batches, only {used} '
            'were available.',
            logger='current',
            level=logging.WARNING)
    with torch.no_grad():
        for m, mean, var in zip(layers, means, variances):
            if used > 0:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
            if get_world_size() > 1:  # every rank joins every reduction
                all_reduce(m.running_mean, op='mean')
                all_reduce(m.running_var, op='mean')
            if hasattr(m, 'reset_split_stats'):
                m.reset_split_stats()
    return used


def _checkpoint_epochs(hook: CheckpointHook, max_epochs: int) -> List[int]:
    """The 1-based epochs after which an epoch-based ``CheckpointHook`` saves
    its periodic checkpoints, as the hook's own ``every_n_epochs`` decides
    (what ``CheckpointHook.after_train_epoch`` asks in MMEngine 0.10.7).
    ``save_last`` adds the last epoch, after which precise BN always runs,
    so it is left out."""
    return [
        epoch for epoch in range(1, max_epochs + 1) if hook.every_n_epochs(
            SimpleNamespace(epoch=epoch - 1), hook.interval, hook.save_begin)
    ]


@HOOKS.register_module()
class PreciseBNHook(Hook):
    """Recompute BN statistics at the default shape before they are used.

    Runs :func:`update_bn_stats` over ``num_iters`` batches of the train set
    at the default (stock) shape, after a train epoch when either

    - its own ``interval`` says so (after every ``interval``-th epoch) or
      the epoch is the last one, or
    - the train loop validates after this epoch, as the loop's own
      ``val_begin`` and ``dynamic_milestones`` / ``dynamic_intervals``
      (from ``val_interval`` and ``dynamic_intervals`` in ``train_cfg``)
      decide it in MMEngine's ``EpochBasedTrainLoop.run``.

    Checkpoints are not part of the rule. Once, before training, the hook
    compares it with each ``CheckpointHook``'s settings and logs one warning
    naming the config keys when a checkpoint would hold statistics that were
    not recomputed just before it was saved.

    The batches come from a loader of its own over the train dataset, with
    the stock per-GPU batch size, the train loader's workers and collate
    function, in an order fixed by the sampler seed and the epoch; with
    several processes each rank takes its share and the statistics are
    averaged. The whole model runs (``mode='loss'`` with the batch's
    labels), so BN layers in necks and auxiliary heads are updated too.

    Args:
        num_iters (int): Batches to average over. Defaults to 200.
        interval (int, optional): Also run after every ``interval``-th
            epoch. Defaults to None (only before validations and after the
            last epoch).

    Note:
        Priority ``ABOVE_NORMAL``: after a train epoch it runs before
        ``CheckpointHook`` (``VERY_LOW``) saves, and every hook's
        ``after_train_epoch`` runs before the loop validates.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self,
                 num_iters: int = 200,
                 interval: Optional[int] = None) -> None:
        check_count('multi_grid.precise_bn.num_iters', num_iters,
                    'an integer >= 1')
        if interval is not None:
            check_count('multi_grid.precise_bn.interval', interval,
                        'an integer >= 1')
        self.num_iters = num_iters
        self.interval = interval

    def before_train(self, runner) -> None:
        """Warn once about checkpoints that would hold stale statistics."""
        message = self._checkpoint_warning(runner)
        if message is not None:
            runner.logger.warning(message)

    def after_train_epoch(self, runner) -> None:
        """Recompute the statistics if the rule says so for this epoch."""
        if self.recomputes_after(runner, runner.epoch + 1):
            self._update(runner)

    def recomputes_after(self, runner, epoch: int) -> bool:
        """Whether statistics are recomputed after the 1-based ``epoch``.

        Args:
            runner (Runner): The runner, with an ``EpochBasedTrainLoop``.
            epoch (int): Number of train epochs completed (1-based).

        Returns:
            bool: True after every ``interval``-th epoch, after the last
            epoch, and after an epoch the train loop validates after.
        """
        if self.interval is not None and epoch % self.interval == 0:
            return True
        if epoch == runner.max_epochs:
            return True
        loop = runner.train_loop
        if runner.val_loop is None or epoch < loop.val_begin:
            return False
        # After after_train_epoch, the loop sets val_interval (which still
        # holds the previous epoch's value here) to the dynamic interval for
        # (completed epochs + 1), then validates when the completed epochs
        # are a multiple of it (or the last epoch, handled above).
        step = bisect.bisect(loop.dynamic_milestones, epoch + 1)
        return epoch % loop.dynamic_intervals[step - 1] == 0

    def _checkpoint_warning(self, runner) -> Optional[str]:
        """The warning for checkpoints saved without recomputed statistics.

        Args:
            runner (Runner): The runner, with its hooks registered.

        Returns:
            str, optional: One message naming the config keys and the fix,
            or None when every checkpoint follows a recomputation.
        """
        for hook in runner.hooks:
            if not isinstance(hook, CheckpointHook):
                continue
            if not hook.by_epoch:
                if hook.interval > 0 or hook.save_last:
                    return ('Multigrid: checkpoints saved by iteration '
                            '(default_hooks.checkpoint.by_epoch=False) hold '
                            'the training BN statistics; precise BN '
                            'recomputes them after train epochs only. Set '
                            'default_hooks.checkpoint.by_epoch=True.')
                continue
            stale = [
                epoch for epoch in _checkpoint_epochs(hook, runner.max_epochs)
                if not self.recomputes_after(runner, epoch)
            ]
            if stale:
                divisor = math.gcd(hook.interval, hook.save_begin)
                return (f'Multigrid: {len(stale)} checkpoint(s), the '
                        f'first after epoch {stale[0]}, would hold BN '
                        'statistics that precise BN did not recompute '
                        '(default_hooks.checkpoint.interval='
                        f'{hook.interval}, save_begin={hook.save_begin}; '
                        'multi_grid.precise_bn.interval='
                        f'{self.interval}; precise BN runs every '
                        'multi_grid.precise_bn.interval epochs, before each '
                        'validation and after the last epoch). Set '
                        'multi_grid.precise_bn.interval to a divisor of '
                        f'{divisor}.')
        return None

    def _update(self, runner) -> None:
        """Recompute BN statistics over default-shape batches."""
        train_loader = runner.train_dataloader
        batch_sampler = train_loader.batch_sampler
        seed = getattr(batch_sampler.sampler, 'seed', None)
        sampler = DefaultSampler(
            train_loader.dataset,
            shuffle=True,
            seed=runner.seed if seed is None else seed)
        sampler.set_epoch(runner.epoch)
        loader = DataLoader(
            train_loader.dataset,
            batch_size=getattr(batch_sampler, 'batch_size', 1),
            sampler=sampler,
            num_workers=train_loader.num_workers,
            collate_fn=train_loader.collate_fn,
            drop_last=True)
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model

        def forward(batch: dict):
            data = model.data_preprocessor(batch, True)
            return model(**data, mode='loss')

        start = time.perf_counter()
        # Recomputing statistics must not shift the training random stream
        # (the loader's seed draw, a pipeline running in this process).
        # Stock batches at the default shape: groups of bn_base_size clips
        # (plain BN by default), whatever bn_grouping sets for training.
        layers = [m for m in model.modules() if is_sub_batch_bn(m)]
        splits = [m.splits for m in layers]
        set_splits(model, None)
        try:
            with preserved_rng():
                used = update_bn_stats(model, loader, self.num_iters, forward)
        finally:
            for layer, split in zip(layers, splits):
                layer.splits = split
        runner.logger.info(
            f'Precise BN after epoch {runner.epoch + 1}: BN statistics '
            f'recomputed at the default shape over {used} batches in '
            f'{time.perf_counter() - start:.1f} s.')
