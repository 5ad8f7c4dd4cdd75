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
from mmaction.registry import MODELS
from torch import Tensor


def _check_base_size(base_size: int) -> int:
    """Validate ``base_size`` and return it."""
    if isinstance(base_size, bool) or not isinstance(base_size, int) or \
            base_size < 1:
        raise ValueError('multi_grid.bn_base_size must be an integer >= 1, '
                         f'got {base_size!r}')
    return base_size


def _sub_batch_forward(bn: nn.modules.batchnorm._BatchNorm,
                       x: Tensor) -> Tensor:
    """Normalise contiguous groups of ``bn.base_size`` samples separately.

    Groups are those of ``torch.split(x, bn.base_size)``: full groups are
    handled in one reshaped pass, a smaller last group separately. Statistics
    are computed in float32 and the output is cast back to ``x.dtype``. In
    training mode the per-group running statistics and the layer's aggregated
    running statistics are updated.

    Args:
        bn (_BatchNorm): A :class:`SubBatchNorm3d` or
            :class:`SubBatchSyncBatchNorm`.
        x (Tensor): Input of shape (N, C, ...), with N > ``bn.base_size``.

    Returns:
        Tensor: The normalised input, same shape and dtype as ``x``.
    """
    n, c = x.shape[:2]
    base = bn.base_size
    xf = x.float().reshape(n, c, -1)
    length = xf.shape[-1]
    num_full = n // base * base
    # Each chunk has shape (groups, samples per group, C, L).
    chunks = [xf[:num_full].reshape(-1, base, c, length)]
    if num_full < n:
        chunks.append(xf[num_full:].unsqueeze(0))
    var_mean = [torch.var_mean(ch, dim=(1, 3), correction=0) for ch in chunks]
    var = torch.cat([v for v, _ in var_mean])  # (G, C), biased
    mean = torch.cat([m for _, m in var_mean])

    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        counts = torch.tensor([ch.shape[1] * length for ch in chunks
                               for _ in range(ch.shape[0])],
                              dtype=torch.float32, device=x.device)
        unbiased = var * (counts / (counts - 1).clamp(min=1))[:, None]
        _update_running_stats(bn, mean.detach(), unbiased.detach())

    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.float()
    outs = []
    start = 0
    for ch in chunks:
        stop = start + ch.shape[0]
        out = (ch - mean[start:stop, None, :, None]) * \
            scale[start:stop, None, :, None]
        if bn.affine:
            out = out + bn.bias.float()[None, None, :, None]
        outs.append(out.reshape(-1, c, length))
        start = stop
    return torch.cat(outs).reshape(x.shape).to(x.dtype)


@torch.no_grad()
def _update_running_stats(bn: nn.modules.batchnorm._BatchNorm, mean: Tensor,
                          var: Tensor) -> None:
    """EMA-update the per-group slots and aggregate them into the layer.

    Args:
        bn (_BatchNorm): The sub-batch BN layer.
        mean (Tensor): Per-group batch means, shape (G, C), float32.
        var (Tensor): Per-group unbiased batch variances, shape (G, C).
    """
    bn.num_batches_tracked.add_(1)
    if bn.momentum is None:  # cumulative average, as nn.BatchNorm does
        factor = 1.0 / float(bn.num_batches_tracked)
    else:
        factor = bn.momentum
    groups = mean.shape[0]
    slot_mean, slot_var = bn._split_mean, bn._split_var
    if slot_mean is None:
        slot_mean = slot_var = mean.new_empty((0, mean.shape[1]))
    slot_mean = slot_mean.to(mean.device)[:groups]
    slot_var = slot_var.to(mean.device)[:groups]
    missing = groups - slot_mean.shape[0]
    if missing > 0:  # new slots start from the layer's current statistics
        slot_mean = torch.cat(
            [slot_mean,
             bn.running_mean.float().expand(missing, -1)])
        slot_var = torch.cat(
            [slot_var, bn.running_var.float().expand(missing, -1)])
    slot_mean = slot_mean * (1 - factor) + mean * factor
    slot_var = slot_var * (1 - factor) + var * factor
    bn._split_mean, bn._split_var = slot_mean, slot_var
    bn.running_mean.copy_(slot_mean.mean(0))
    bn.running_var.copy_(
        slot_var.mean(0) + slot_mean.var(0, unbiased=False))


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
