"""Sub-batch BatchNorm: batch statistics over a fixed number of clips.

Multigrid training changes the per-device batch size. To keep the number of
clips that BatchNorm statistics are computed over fixed (``bn_base_size``), a
batch larger than that is split into contiguous groups of ``base_size`` clips,
each normalised with its own statistics by the native kernel, written in place
into one output (no re-layout copies). One set of running statistics is kept
per group; the layer's ``running_mean`` / ``running_var`` are always their
aggregation, so evaluation and checkpoints see an ordinary BatchNorm3d.
"""
import functools
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmaction.registry import MODELS
from torch import Tensor
from torch.autograd.function import once_differentiable


def _check_base_size(base_size: int) -> int:
    """Validate ``base_size`` and return it."""
    if isinstance(base_size, bool) or not isinstance(base_size, int) or \
            base_size < 1:
        raise ValueError('multi_grid.bn_base_size must be an integer >= 1, '
                         f'got {base_size!r}')
    return base_size


_aten = torch.ops.aten


@functools.lru_cache(maxsize=None)
def _stat_dtype(device: torch.device, x_dtype: torch.dtype,
                param_dtype: Optional[torch.dtype],
                running_dtype: Optional[torch.dtype]) -> torch.dtype:
    """dtype of the mean / invstd that native ``batch_norm`` saves.

    It depends on the device and on mixing reduced-precision inputs with
    float parameters, so it is asked of the native kernel once per case.
    """

    def probe(dtype: Optional[torch.dtype], fill: float) -> Optional[Tensor]:
        return None if dtype is None else torch.full(
            (1, ), fill, dtype=dtype, device=device)

    _, mean, _ = _aten.native_batch_norm(
        torch.zeros(2, 1, dtype=x_dtype, device=device),
        probe(param_dtype, 1.0), probe(param_dtype, 0.0),
        probe(running_dtype, 0.0), probe(running_dtype, 1.0), True, 0.1,
        1e-5)
    return mean.dtype


def _like(t: Tensor, x: Tensor) -> Tensor:
    """``t`` in the memory format of ``x`` (contiguous or channels-last)."""
    if x.is_contiguous():
        return t.contiguous()
    return t.contiguous(memory_format=torch.channels_last_3d)


class _GroupedBatchNorm(torch.autograd.Function):
    """Native ``batch_norm`` on each ``torch.split(x, base)`` group.

    Groups are slices along the batch dimension, hence views: the forward
    pass writes each group's output straight into one output tensor, with
    no re-layout copies; the backward pass runs the native backward kernel
    per group and copies the input gradient together once.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], slot_mean: Optional[Tensor],
                slot_var: Optional[Tensor], base: int, momentum: float,
                eps: float) -> Tensor:
        if not (x.is_contiguous()
                or x.is_contiguous(memory_format=torch.channels_last_3d)):
            x = x.contiguous()
        channels, groups = x.shape[1], -(-x.shape[0] // base)
        dtype = _stat_dtype(
            x.device, x.dtype, None if weight is None else weight.dtype,
            None if slot_mean is None else slot_mean.dtype)
        out = torch.empty_like(x)
        save_mean = x.new_empty((groups, channels), dtype=dtype)
        save_invstd = x.new_empty((groups, channels), dtype=dtype)
        running = ((None, None), ) * groups if slot_mean is None else list(
            zip(slot_mean.unbind(0), slot_var.unbind(0)))
        for part, part_out, (mean, var), s_mean, s_invstd in zip(
                x.split(base), out.split(base), running, save_mean.unbind(0),
                save_invstd.unbind(0)):
            if part.numel() == channels:
                # One value per channel (a 1-clip group of 1x1x1 features):
                # it normalises to 0, so the output is the bias; running
                # statistics are left as they are, and invstd 0 gives the
                # matching gradients (nn.BatchNorm raises here; small shapes
                # of a stock batch of 1 reach it).
                s_mean.zero_()
                s_invstd.zero_()
                if bias is None:
                    part_out.zero_()
                else:
                    part_out.copy_(bias.view(1, -1, *[1] * (x.dim() - 2)))
                continue
            _aten.native_batch_norm.out(
                part, weight, bias, mean, var, True, momentum, eps,
                out=part_out, save_mean=s_mean, save_invstd=s_invstd)
        ctx.save_for_backward(x, weight, save_mean, save_invstd)
        ctx.base, ctx.eps = base, eps
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple:
        x, weight, save_mean, save_invstd = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0]] + [
            weight is not None and need for need in ctx.needs_input_grad[1:3]]
        grads = [
            _aten.native_batch_norm_backward(part_grad, part, weight, None,
                                             None, mean, invstd, True,
                                             ctx.eps, mask)
            for part_grad, part, mean, invstd in zip(
                _like(grad, x).split(ctx.base), x.split(ctx.base),
                save_mean.unbind(0), save_invstd.unbind(0))
        ]
        grad_x = torch.cat([g[0] for g in grads]) if mask[0] else None
        grad_w, grad_b = (
            torch.stack([g[i] for g in grads]).sum(0) if mask[i] else None
            for i in (1, 2))
        return grad_x, grad_w, grad_b, None, None, None, None, None


def _group_slots(bn: nn.modules.batchnorm._BatchNorm, groups: int,
                 device: torch.device) -> Tuple[Tensor, Tensor]:
    """Per-group running statistics for ``groups`` groups, shape (G, C).

    Existing slots are kept, extra ones dropped; new slots start from the
    layer's current running statistics.
    """
    mean, var = bn._split_mean, bn._split_var
    if mean is None:
        mean = var = bn.running_mean.new_empty((0, bn.num_features))
    if mean.device != device:
        mean, var = mean.to(device), var.to(device)
    missing = groups - mean.shape[0]
    if missing > 0:
        mean = torch.cat([mean, bn.running_mean.expand(missing, -1)])
        var = torch.cat([var, bn.running_var.expand(missing, -1)])
    return mean[:groups], var[:groups]


def _sub_batch_forward(bn: nn.modules.batchnorm._BatchNorm,
                       x: Tensor) -> Tensor:
    """Normalise contiguous groups of ``bn.base_size`` samples separately.

    Groups are those of ``torch.split(x, bn.base_size)``; each group's
    running statistics are updated by the native kernel. In training the
    layer's running statistics are then set to their aggregation.

    Args:
        bn (_BatchNorm): A :class:`SubBatchNorm3d` or
            :class:`SubBatchSyncBatchNorm`.
        x (Tensor): Input of shape (N, C, ...), with N > ``bn.base_size``.

    Returns:
        Tensor: The normalised input, same shape as ``x``.
    """
    track = bn.training and bn.track_running_stats
    slot_mean = slot_var = None
    factor = 0.0
    if track:
        bn.num_batches_tracked.add_(1)
        factor = (1.0 / float(bn.num_batches_tracked)
                  if bn.momentum is None else bn.momentum)
        slot_mean, slot_var = _group_slots(bn, -(-x.shape[0] // bn.base_size),
                                           x.device)
    out = _GroupedBatchNorm.apply(x, bn.weight, bn.bias, slot_mean, slot_var,
                                  bn.base_size, factor, bn.eps)
    if track:
        with torch.no_grad():
            bn._split_mean, bn._split_var = slot_mean, slot_var
            mean = torch.mean(slot_mean, 0, out=bn.running_mean)
            # Biased variance of the group means, written out: Tensor.var
            # over dim 0 is about 20x slower on CPU (torch 2.13, C=2048).
            spread = (slot_mean - mean).square_().mean(0)
            torch.mean(slot_var, 0, out=bn.running_var).add_(spread)
    return out


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
