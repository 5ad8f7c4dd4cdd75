"""Sub-batch BatchNorm: batch statistics over a fixed number of clips.

Multigrid training changes the per-device batch size. To keep the number of
clips that BatchNorm statistics are computed over fixed (``bn_base_size``), a
batch larger than that is split into contiguous groups of ``base_size`` clips,
each normalised with its own statistics. One set of running statistics is kept
per group; the layer's ``running_mean`` / ``running_var`` are always their
aggregation, so evaluation and checkpoints see an ordinary BatchNorm3d.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmaction.registry import MODELS
from torch import Tensor


def _check_base_size(base_size: int) -> int:
    """Validate ``base_size`` and return it."""
    if isinstance(base_size, bool) or not isinstance(base_size, int) or \
            base_size < 1:
        raise ValueError('multi_grid.bn_base_size must be an integer >= 1, '
                         f'got {base_size!r}')
    return base_size


def _side_by_side(x: Tensor, groups: int) -> Tensor:
    """(G*m, C, ...) -> (m, G*C, ...): each group's channels side by side."""
    m = x.shape[0] // groups
    return x.reshape(groups, m, *x.shape[1:]).transpose(0, 1).reshape(
        m, groups * x.shape[1], *x.shape[2:])


def _one_above_other(y: Tensor, groups: int) -> Tensor:
    """Inverse of :func:`_side_by_side`."""
    m, c = y.shape[0], y.shape[1] // groups
    return y.reshape(m, groups, c, *y.shape[2:]).transpose(0, 1).reshape(
        groups * m, c, *y.shape[2:])


def _group_slots(bn: nn.modules.batchnorm._BatchNorm, groups: int,
                 device: torch.device) -> Tuple[Tensor, Tensor]:
    """Per-group running statistics for ``groups`` groups, shape (G, C).

    Existing slots are kept, extra ones dropped; new slots start from the
    layer's current running statistics.
    """
    mean, var = bn._split_mean, bn._split_var
    if mean is None:
        mean = var = bn.running_mean.new_empty((0, bn.num_features))
    mean, var = mean[:groups].to(device), var[:groups].to(device)
    missing = groups - mean.shape[0]
    if missing > 0:
        mean = torch.cat([mean, bn.running_mean.expand(missing, -1)])
        var = torch.cat([var, bn.running_var.expand(missing, -1)])
    return mean.contiguous(), var.contiguous()


def _sub_batch_forward(bn: nn.modules.batchnorm._BatchNorm,
                       x: Tensor) -> Tensor:
    """Normalise contiguous groups of ``bn.base_size`` samples separately.

    Groups are those of ``torch.split(x, bn.base_size)``. The full groups
    are laid side by side as channels of one batch and go through the
    native ``batch_norm`` kernel in one call (a smaller last group in a
    second call), which also updates each group's running statistics. In
    training the layer's running statistics are then set to their
    aggregation.

    Args:
        bn (_BatchNorm): A :class:`SubBatchNorm3d` or
            :class:`SubBatchSyncBatchNorm`.
        x (Tensor): Input of shape (N, C, ...), with N > ``bn.base_size``.

    Returns:
        Tensor: The normalised input, same shape as ``x``.
    """
    n, base = x.shape[0], bn.base_size
    chunks = [(n // base, base)] + ([(1, n % base)] if n % base else [])
    track = bn.training and bn.track_running_stats
    slot_mean = slot_var = None
    factor = 0.0
    if track:
        bn.num_batches_tracked.add_(1)
        factor = (1.0 / float(bn.num_batches_tracked)
                  if bn.momentum is None else bn.momentum)
        slot_mean, slot_var = _group_slots(
            bn, sum(groups for groups, _ in chunks), x.device)
    outs, start, group = [], 0, 0
    for groups, size in chunks:
        part = _side_by_side(x[start:start + groups * size], groups)
        stats = ((slot_mean[group:group + groups].view(-1),
                  slot_var[group:group + groups].view(-1))
                 if track else (None, None))
        weight = bn.weight.repeat(groups) if bn.affine else None
        bias = bn.bias.repeat(groups) if bn.affine else None
        if part.numel() == part.shape[1]:
            # One value per channel and group (a 1-clip group of 1x1x1
            # features): it normalises to 0, so the output is the bias; the
            # running statistics are left as they are. nn.BatchNorm raises
            # here; small shapes of a stock batch of 1 reach it.
            out = torch.zeros_like(part) if bias is None else (
                part * 0 + bias.view(1, -1, *[1] * (part.dim() - 2)))
        else:
            out = F.batch_norm(part, *stats, weight, bias, True, factor,
                               bn.eps)
        outs.append(_one_above_other(out, groups))
        start, group = start + groups * size, group + groups
    if track:
        with torch.no_grad():
            bn._split_mean, bn._split_var = slot_mean, slot_var
            bn.running_mean.copy_(slot_mean.mean(0))
            bn.running_var.copy_(
                slot_var.mean(0) + slot_mean.var(0, unbiased=False))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


class _SubBatchMixin:
    """State and helpers shared by the sub-batch BN layers."""

    base_size: int
    _split_mean: Optional[Tensor]
    _split_var: Optional[Tensor]

    def _init_sub_batch(self, base_size: int) -> None:
        self.base_size = _check_base_size(base_size)
        # Plain attributes, not buffers: the state_dict stays BatchNorm's.
        self._split_mean = None
        self._split_var = None

    def reset_split_stats(self) -> None:
        """Forget the per-group running statistics.

        The next split training step starts every group from the layer's
        current ``running_mean`` / ``running_var``.
        """
        self._split_mean = None
        self._split_var = None

    def _use_sub_batch(self, x: Tensor) -> bool:
        bn_training = self.training or self.running_mean is None
        return bn_training and x.shape[0] > self.base_size

    def _load_from_state_dict(self, state_dict: Dict, prefix: str, *args,
                              **kwargs) -> None:
        # Loaded running statistics replace whatever the groups tracked.
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.reset_split_stats()

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, base_size={self.base_size}'


@MODELS.register_module('SubBatchBN3d')
class SubBatchNorm3d(_SubBatchMixin, nn.BatchNorm3d):
    """BatchNorm3d computing training statistics per group of clips.

    With N <= ``base_size`` it is exactly :class:`torch.nn.BatchNorm3d`. With
    N > ``base_size`` the batch is split as ``torch.split(x, base_size)`` and
    each group is normalised with its own statistics (same affine weight and
    bias). Running statistics are kept per group and aggregated into
    ``running_mean`` (mean of the group means) and ``running_var`` (mean of
    the group variances plus the biased variance of the group means) after
    every step. Evaluation uses the aggregated statistics. The ``state_dict``
    is that of :class:`torch.nn.BatchNorm3d`.

    Args:
        num_features (int): Number of channels C of an (N, C, T, H, W) input.
        eps (float): Added to the variance. Defaults to 1e-5.
        momentum (float, optional): Running statistics momentum; ``None``
            means a cumulative average. Defaults to 0.1.
        affine (bool): Learnable weight and bias. Defaults to True.
        track_running_stats (bool): Keep running statistics. Defaults to True.
        device (torch.device, optional): Device of the parameters and
            buffers. Defaults to None.
        dtype (torch.dtype, optional): Their dtype. Defaults to None.
        base_size (int): Number of clips per statistics group
            (``multi_grid.bn_base_size``). Keyword only, required.
    """

    _abbr_ = 'bn'

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: Optional[float] = 0.1,
                 affine: bool = True,
                 track_running_stats: bool = True,
                 device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None,
                 *,
                 base_size: int) -> None:
        super().__init__(num_features, eps, momentum, affine,
                         track_running_stats, device, dtype)
        self._init_sub_batch(base_size)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` of shape (N, C, T, H, W)."""
        self._check_input_dim(x)
        if self._use_sub_batch(x):
            return _sub_batch_forward(self, x)
        if self.training:
            self.reset_split_stats()
        return super().forward(x)


@MODELS.register_module('SubBatchSyncBN')
class SubBatchSyncBatchNorm(_SubBatchMixin, nn.SyncBatchNorm):
    """SyncBatchNorm that uses local sub-batch statistics for large batches.

    For a 5D input with N > ``base_size`` in training it behaves as
    :class:`SubBatchNorm3d` (no synchronisation across processes); otherwise
    it is :class:`torch.nn.SyncBatchNorm`.

    Args:
        num_features (int): Number of channels C.
        eps (float): Added to the variance. Defaults to 1e-5.
        momentum (float, optional): Running statistics momentum; ``None``
            means a cumulative average. Defaults to 0.1.
        affine (bool): Learnable weight and bias. Defaults to True.
        track_running_stats (bool): Keep running statistics. Defaults to True.
        process_group (ProcessGroup, optional): Group to synchronise over.
            Defaults to None (the whole world).
        device (torch.device, optional): Device of the parameters and
            buffers. Defaults to None.
        dtype (torch.dtype, optional): Their dtype. Defaults to None.
        base_size (int): Number of clips per statistics group
            (``multi_grid.bn_base_size``). Keyword only, required.
    """

    _abbr_ = 'bn'

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: Optional[float] = 0.1,
                 affine: bool = True,
                 track_running_stats: bool = True,
                 process_group: Optional[object] = None,
                 device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None,
                 *,
                 base_size: int) -> None:
        super().__init__(num_features, eps, momentum, affine,
                         track_running_stats, process_group, device, dtype)
        self._init_sub_batch(base_size)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x``; 5D inputs larger than ``base_size`` are split."""
        if x.dim() == 5 and self._use_sub_batch(x):
            self._check_non_zero_input_channels(x)
            return _sub_batch_forward(self, x)
        if self.training:
            self.reset_split_stats()
        return super().forward(x)


def _convert(module: nn.Module, base_size: int,
             memo: Dict[int, nn.Module]) -> nn.Module:
    """Return the sub-batch replacement of ``module`` (or ``module``)."""
    if isinstance(module, _SubBatchMixin):
        return module
    if isinstance(module, nn.SyncBatchNorm):
        kwargs = dict(process_group=module.process_group)
        cls = SubBatchSyncBatchNorm
    elif isinstance(module, nn.BatchNorm3d):
        kwargs = {}
        cls = SubBatchNorm3d
    else:
        return module
    if id(module) in memo:  # a BN shared by several parents
        return memo[id(module)]
    new = cls(
        module.num_features,
        module.eps,
        module.momentum,
        module.affine,
        module.track_running_stats,
        device='meta',
        base_size=base_size,
        **kwargs)
    # Reuse the very same Parameter and buffer objects, so optimizers and
    # anything else holding references stay valid.
    for name in ('weight', 'bias'):
        setattr(new, name, getattr(module, name))
    for name in ('running_mean', 'running_var', 'num_batches_tracked'):
        new.register_buffer(name, getattr(module, name))
    new.train(module.training)
    memo[id(module)] = new
    return new


def convert_sub_batch_bn(model: nn.Module, base_size: int) -> nn.Module:
    """Replace BatchNorm3d / SyncBatchNorm layers by their sub-batch versions.

    Every :class:`torch.nn.BatchNorm3d` (subclasses included) becomes a
    :class:`SubBatchNorm3d` and every :class:`torch.nn.SyncBatchNorm` a
    :class:`SubBatchSyncBatchNorm`. The new layers hold the same Parameter
    and buffer objects, hyper-parameters and training flag, so an optimizer
    built on ``model`` stays valid and state dicts are interchangeable.
    Layers that are already sub-batch layers are left as they are.

    Args:
        model (nn.Module): The model, converted in place.
        base_size (int): Number of clips per statistics group
            (``multi_grid.bn_base_size``).

    Returns:
        nn.Module: ``model``, or its replacement if ``model`` is itself a BN
        layer.
    """
    _check_base_size(base_size)
    memo: Dict[int, nn.Module] = {}

    def convert(module: nn.Module) -> nn.Module:
        new = _convert(module, base_size, memo)
        if new is not module:
            return new
        # ``named_children`` skips repeated modules; ``_modules`` lists every
        # slot, so a BN shared by several parents is replaced everywhere.
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            new_child = convert(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module

    return convert(model)


__all__: Tuple[str, ...] = ('SubBatchNorm3d', 'SubBatchSyncBatchNorm',
                            'convert_sub_batch_bn')
