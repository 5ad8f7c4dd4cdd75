"""Precise BatchNorm: recompute BN running statistics over many batches.

The running statistics collected during training are an exponential average
over weights that kept changing. Before evaluation, multigrid training (like
PySlowFast) replaces them with an exact average over a number of batches run
through the current weights. This module holds the helper only; a hook calls
it.
"""
import itertools
import logging
from typing import Any, Callable, Iterable, List, Optional

import torch
import torch.nn as nn
from mmengine.dist import all_reduce, get_world_size
from mmengine.logging import print_log
from torch.nn.modules.batchnorm import _BatchNorm


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
    :class:`~mmaction_multigrid.bn.SubBatchNorm3d`) is updated, except, when
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
              if m.num_batches_tracked is not None else None)
             for m in layers]
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
