"""Sub-batch BatchNorm: batch statistics over a fixed number of clips.

Multigrid training changes the per-device batch size. To keep the number of
clips that BatchNorm statistics are computed over fixed (``bn_base_size``), a
batch of N > ``base_size`` clips is split into ``G = ceil(N / base_size)``
groups, sample ``i`` in group ``i % G`` (PySlowFast's interleaving; it fixes
the group count per long-cycle stage instead of the group size), each
normalised with its own statistics. When G divides N this is one native
BatchNorm call on a copy-free (N / G, G * C, ...) view of the batch. One set
of running statistics is kept per group; the layer's ``running_mean`` /
``running_var`` read as their aggregation (computed when read), so
evaluation and checkpoints see an ordinary BatchNorm3d.

``BatchNorm2d`` layers of backbones that run a 2D network over the frames
of the clips (C2D: an (N, C, T, H, W) batch becomes (N*T, C, H, W), the
frames of each clip contiguous) are grouped by whole clips: the clip count
comes from the innermost enclosing module that received a 5D input.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmaction.registry import MODELS
# What MMEngine's revert_sync_batchnorm turns SyncBN layers into (0.10.7).
from mmengine.model.utils import _BatchNormXd
from torch import Tensor

from ..schedule.options import check_count


def _check_base_size(base_size: int) -> int:
    """Validate ``base_size`` and return it."""
    check_count('multi_grid.bn_base_size', base_size, 'an integer >= 1')
    return base_size


def _num_groups(n: int, base_size: int) -> int:
    """Number of groups G for a batch of ``n`` > ``base_size`` samples:
    ``ceil(n / base_size)``; sample ``i`` belongs to group ``i % G``."""
    return -(-n // base_size)


def _batch_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                mean: Optional[Tensor], var: Optional[Tensor], momentum: float,
                eps: float) -> Tensor:
    """Training-mode batch norm; channels with one value each (a 1-clip
    group of 1x1x1 features, which BatchNorm refuses) normalise to 0, so
    they give the bias, with zero gradient to ``x``, and leave the running
    statistics as they are.

    ``torch.batch_norm`` itself, not ``F.batch_norm``: the functional's
    argument checks cost more CPU than the kernel launch at small shapes.
    """
    if x.numel() == x.shape[1]:
        out = x * 0
        return out if bias is None else out + bias.view(
            1, -1, *[1] * (x.dim() - 2)).to(out.dtype)
    return torch.batch_norm(x, weight, bias, mean, var, True, momentum, eps,
                            torch.backends.cudnn.enabled)


def _sub_batch_forward(bn: nn.modules.batchnorm._BatchNorm,
                       x: Tensor) -> Tensor:
    """Normalise ``G = ceil(N / bn.base_size)`` groups of samples separately
    (``G = min(bn.splits, N)`` when the layer has ``splits``).

    Sample ``i`` belongs to group ``i % G``, as in the reference
    implementation (PySlowFast's ``SubBatchNorm3d``): when ``G`` divides N,
    ``x`` is viewed as (N / G, G * C, ...) with no copy and normalised by
    one native BatchNorm call over ``G * C`` channels, whose running
    statistics are the groups'. Otherwise (a last, smaller batch) each group
    is normalised on its own. The layer's own running statistics become
    the groups' aggregation when next read (see :class:`_SubBatchMixin`):
    on a GPU this path is bound by the CPU that launches its kernels, so it
    launches as few as it can.

    Args:
        bn (_BatchNorm): A :class:`SubBatchNorm3d` or
            :class:`SubBatchSyncBatchNorm`.
        x (Tensor): Input of shape (N, C, ...), with N > ``bn.base_size``.

    Returns:
        Tensor: The normalised input, same shape as ``x``.
    """
    n, channels = x.shape[:2]
    groups = min(bn.splits, n) if bn.splits else _num_groups(n, bn.base_size)
    track = bn.training and bn.track_running_stats
    factor = 0.0
    if track:
        tracked = bn.num_batches_tracked
        tracked.add_(1)
        factor = (1.0 / float(tracked) if bn.momentum is None else bn.momentum)
    if n % groups:
        return _uneven_forward(bn, x, groups, track, factor)
    mean = var = None
    if track:
        mean, var = bn._group_slots(groups, x.device, flat=True)
    weight, bias = bn.weight, bn.bias
    if weight is not None:
        index = bn._channel_index(groups, x.device)
        weight = weight.index_select(0, index)
        bias = bias.index_select(0, index)
    return _batch_norm(
        x.reshape(n // groups, groups * channels, *x.shape[2:]), weight, bias,
        mean, var, factor, bn.eps).view(x.shape)


def _uneven_forward(bn: nn.modules.batchnorm._BatchNorm, x: Tensor,
                    groups: int, track: bool, factor: float) -> Tensor:
    """:func:`_sub_batch_forward` when ``groups`` does not divide N: each
    group normalised on its own."""
    n = x.shape[0]
    mean = var = None
    if track:
        mean, var = bn._group_slots(groups, x.device)
    parts = [
        _batch_norm(x[g::groups], bn.weight, bn.bias,
                    None if mean is None else mean[g],
                    None if var is None else var[g], factor, bn.eps)
        for g in range(groups)
    ]
    # Row r of the concatenation holds sample order[r].
    order = torch.cat(
        [torch.arange(g, n, groups, device=x.device) for g in range(groups)])
    return torch.cat(parts)[order.argsort()]


class _SubBatchMixin:
    """State and helpers shared by the sub-batch BN layers.

    The per-group running statistics live in ``_split_mean`` /
    ``_split_var`` (G, C). The layer's ``running_mean`` / ``running_var``
    are their aggregation (mean of the group means; mean of the group
    variances plus the biased variance of the group means), computed when
    they are next read (attribute access, ``state_dict``, a plain-BN step)
    rather than after every split step: six small kernels per layer and
    step are what made sub-batch BN cost up to 1.6x an iteration on a GPU.
    """

    base_size: int
    _split_mean: Optional[Tensor]
    _split_var: Optional[Tensor]

    def _init_sub_batch(self, base_size: int) -> None:
        self.base_size = _check_base_size(base_size)
        # A fixed number of groups per batch instead of groups of base_size
        # samples (multi_grid.bn_grouping='splits'; see set_splits).
        self.splits: Optional[int] = None
        # Plain attributes, not buffers: the state_dict stays BatchNorm's.
        self._set_slots(None, None)
        self._stale = False
        self._indices: Dict[Tuple[int, torch.device], Tensor] = {}

    def __getattr__(self, name: str):
        if name in ('running_mean', 'running_var') and \
                self.__dict__.get('_stale'):
            self._aggregate()
        return super().__getattr__(name)

    def _aggregate(self) -> None:
        """Write the groups' aggregation into the running statistics."""
        self._stale = False
        mean, var = self._split_mean, self._split_var
        running_mean = self._buffers['running_mean']
        running_var = self._buffers['running_var']
        with torch.no_grad():
            total = mean.mean(0)
            spread = (mean - total).square_().mean(0)
            running_mean.copy_(total)
            running_var.copy_(var.mean(0).add_(spread))

    def _group_slots(self,
                     groups: int,
                     device: torch.device,
                     flat: bool = False) -> Tuple[Tensor, Tensor]:
        """Per-group running statistics for ``groups`` groups, shape (G, C)
        (or (G * C,) with ``flat``), marked as not yet aggregated.

        Existing slots are kept, extra ones dropped; new slots start from
        the layer's current running statistics (the aggregation of the
        slots so far).
        """
        mean = self._split_mean
        if mean is None or mean.shape[0] != groups or mean.device != device:
            running_mean, running_var = self.running_mean, self.running_var
            var = self._split_var
            if mean is None:
                mean = var = running_mean.new_empty((0, self.num_features))
            mean, var = mean.to(device), var.to(device)
            missing = groups - mean.shape[0]
            if missing > 0:
                mean = torch.cat([mean, running_mean.expand(missing, -1)])
                var = torch.cat([var, running_var.expand(missing, -1)])
            self._set_slots(mean[:groups], var[:groups])
        self.__dict__['_stale'] = True  # not nn.Module.__setattr__: hot path
        return self._flat if flat else (self._split_mean, self._split_var)

    def _set_slots(self, mean: Optional[Tensor],
                   var: Optional[Tensor]) -> None:
        """Keep ``(mean, var)`` (G, C) as the groups' statistics."""
        self._split_mean, self._split_var = mean, var
        self._flat = None if mean is None else (mean.view(-1), var.view(-1))

    def _channel_index(self, groups: int, device: torch.device) -> Tensor:
        """Channel of each of the ``groups * C`` grouped channels (cached:
        one gather per parameter is the cheapest way to repeat them)."""
        index = self._indices.get((groups, device))
        if index is None:
            index = torch.arange(
                groups * self.num_features, device=device) % self.num_features
            self._indices[groups, device] = index
        return index

    def reset_split_stats(self) -> None:
        """Forget the per-group running statistics (after writing their
        aggregation into ``running_mean`` / ``running_var``).

        The next split training step starts every group from the layer's
        current ``running_mean`` / ``running_var``.
        """
        if self._stale:
            self._aggregate()
        self._set_slots(None, None)

    def split_stats(self) -> Optional[Tuple[Tensor, Tensor]]:
        """Per-group running ``(mean, var)``, each of shape (G, C), or None
        when the last training step used no groups."""
        if self._split_mean is None:
            return None
        return self._split_mean, self._split_var

    def load_split_stats(self, mean: Tensor, var: Tensor) -> None:
        """Continue from per-group statistics that :meth:`split_stats`
        returned (e.g. from a checkpoint), on this layer's device."""
        device = self._buffers['running_mean'].device
        self._set_slots(mean.to(device), var.to(device))
        self._stale = True

    def _use_sub_batch(self, x: Tensor) -> bool:
        bn_training = self.training or self._buffers.get(
            'running_mean') is None
        if self.splits is not None:
            return bn_training and self.splits > 1 and x.shape[0] > 1
        return bn_training and x.shape[0] > self.base_size

    def _save_to_state_dict(self, destination, prefix: str,
                            keep_vars: bool) -> None:
        if self._stale:
            self._aggregate()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: Dict, prefix: str, *args,
                              **kwargs) -> None:
        # Loaded running statistics replace whatever the groups tracked.
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._stale = False
        self.reset_split_stats()

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, base_size={self.base_size}'


@MODELS.register_module('SubBatchBN3d')
class SubBatchNorm3d(_SubBatchMixin, nn.BatchNorm3d):
    """BatchNorm3d computing training statistics per group of clips.

    With N <= ``base_size`` it is exactly :class:`torch.nn.BatchNorm3d`. With
    N > ``base_size`` the batch is split into ``G = ceil(N / base_size)``
    groups, sample ``i`` in group ``i % G`` (``base_size`` clips each when
    ``base_size`` divides N), and each group is normalised with its own
    statistics (same affine weight and bias). Running statistics are kept
    per group and aggregated into
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


class SubBatchNormXd(SubBatchNorm3d):
    """:class:`SubBatchNorm3d` without the 5D input check: the sub-batch
    version of MMEngine's ``_BatchNormXd``, which
    ``revert_sync_batchnorm`` makes of SyncBN layers on one process. 5D
    inputs larger than ``base_size`` are split, others normalised as
    by plain BatchNorm.

    Args: as :class:`SubBatchNorm3d`.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        return

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x``; 5D inputs larger than ``base_size`` are split."""
        if x.dim() == 5:
            return super().forward(x)
        if self.training:
            self.reset_split_stats()
        return nn.modules.batchnorm._BatchNorm.forward(self, x)


class ClipCount:
    """The number of clips of the batch being forwarded, shared by the
    :class:`SubBatchNorm2d` layers of one model. Forward pre-hooks on their
    enclosing modules set it from every 5D (N, C, T, H, W) input, so the
    innermost such module has the last word."""

    def __init__(self) -> None:
        self.clips: Optional[int] = None

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor) and args[0].dim() == 5:
            self.clips = args[0].shape[0]


class SubBatchNorm2d(_SubBatchMixin, nn.BatchNorm2d):
    """BatchNorm2d over the frames of clips, grouped by whole clips.

    The input is (N*T, C, H, W) with the T frames of each clip contiguous,
    as in C2D. With N > ``base_size`` clips, clip ``i`` is in group
    ``i % G`` (``G = ceil(N / base_size)``) and each group is normalised
    with the statistics of all its frames, as BatchNorm2d over that group's
    frames alone would; running statistics as in :class:`SubBatchNorm3d`.
    Otherwise, or while the clip count is unknown, it is
    :class:`torch.nn.BatchNorm2d`.

    Args:
        num_features (int): Number of channels C.
        eps (float): Added to the variance. Defaults to 1e-5.
        momentum (float, optional): Running statistics momentum; ``None``
            means a cumulative average. Defaults to 0.1.
        affine (bool): Learnable weight and bias. Defaults to True.
        track_running_stats (bool): Keep running statistics. Defaults to True.
        device (torch.device, optional): Device of the parameters and
            buffers. Defaults to None.
        dtype (torch.dtype, optional): Their dtype. Defaults to None.
        base_size (int): Number of clips per statistics group. Keyword only.
        clip_count (ClipCount, optional): Where the clip count of the
            current batch is read. Keyword only. Defaults to None.
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
                 base_size: int,
                 clip_count: Optional[ClipCount] = None) -> None:
        super().__init__(num_features, eps, momentum, affine,
                         track_running_stats, device, dtype)
        self._init_sub_batch(base_size)
        self.clip_count = clip_count

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` of shape (N*T, C, H, W)."""
        self._check_input_dim(x)
        clips = self.clip_count.clips if self.clip_count else None
        if clips and x.shape[0] % clips == 0 and self._use_sub_batch(
                x[:clips]):
            frames = x.shape[0] // clips
            clip_major = x.view(clips, frames, *x.shape[1:]).transpose(1, 2)
            out = _sub_batch_forward(self, clip_major)
            return out.transpose(1, 2).reshape(x.shape)
        if self.training:
            self.reset_split_stats()
        return super().forward(x)


def is_sub_batch_bn(module: nn.Module) -> bool:
    """Whether ``module`` is one of the sub-batch BN layers."""
    return isinstance(module, _SubBatchMixin)


def _convert(module: nn.Module, base_size: int, memo: Dict[int, nn.Module],
             clip_count: ClipCount) -> nn.Module:
    """Return the sub-batch replacement of ``module`` (or ``module``)."""
    if isinstance(module, _SubBatchMixin):
        return module
    if isinstance(module, nn.SyncBatchNorm):
        kwargs = dict(process_group=module.process_group)
        cls = SubBatchSyncBatchNorm
    elif isinstance(module, nn.BatchNorm3d):
        kwargs = {}
        cls = SubBatchNorm3d
    elif isinstance(module, nn.BatchNorm2d):
        kwargs = dict(clip_count=clip_count)
        cls = SubBatchNorm2d
    elif type(module) is _BatchNormXd:
        kwargs = {}
        cls = SubBatchNormXd
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


def _eval_in_training(model: nn.Module) -> set:
    """Ids of the BN layers that ``model.train()`` leaves in eval mode
    (``norm_eval``, frozen stages); the modes are restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.train()
    ids = {
        id(m)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training
    }
    for module, training in modes:
        module.training = training
    return ids


def convert_sub_batch_bn(model: nn.Module, base_size: int) -> nn.Module:
    """Replace BatchNorm layers by their sub-batch versions.

    Every :class:`torch.nn.BatchNorm3d` (subclasses included) becomes a
    :class:`SubBatchNorm3d`, every :class:`torch.nn.SyncBatchNorm` a
    :class:`SubBatchSyncBatchNorm`, every :class:`torch.nn.BatchNorm2d` a
    :class:`SubBatchNorm2d` (grouped by whole clips) and every MMEngine
    ``_BatchNormXd`` (a reverted SyncBN) a :class:`SubBatchNormXd`. Layers
    that stay in eval mode during training (``norm_eval``, frozen stages)
    are left as they are, as are layers that are already sub-batch layers
    (:func:`plain_bn_layers` lists what stays plain, and why). The new
    layers hold the same Parameter and buffer objects, hyper-parameters and
    training flag, so an optimizer built on ``model`` stays valid and state
    dicts are interchangeable.

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
    frozen = _eval_in_training(model)
    clip_count = ClipCount()
    users: List[str] = []  # where clip_count is read

    def convert(module: nn.Module, name: str) -> nn.Module:
        new = module if id(module) in frozen else _convert(
            module, base_size, memo, clip_count)
        if new is not module:
            if isinstance(new, SubBatchNorm2d):
                users.append(name)
            return new
        # ``named_children`` skips repeated modules; ``_modules`` lists every
        # slot, so a BN shared by several parents is replaced everywhere.
        for child_name, child in list(module._modules.items()):
            if child is None:
                continue
            new_child = convert(child, f'{name}.{child_name}'.lstrip('.'))
            if new_child is not child:
                setattr(module, child_name, new_child)
        return module

    model = convert(model, '')
    enclosing = {
        '.'.join(name.split('.')[:i])
        for name in users
        for i in range(len(name.split('.')))
    }
    for name in sorted(enclosing):
        model.get_submodule(name).register_forward_pre_hook(clip_count)
    return model


def set_splits(model: nn.Module, splits: Optional[int]) -> None:
    """Make every sub-batch BN layer of ``model`` split its batches into
    ``splits`` groups (sample ``i`` in group ``i % splits``; plain BN for
    1), whatever their size, or into groups of ``base_size`` samples again
    (None).

    PySlowFast's grouping: it fixes ``BN.NUM_SPLITS`` per long-cycle stage,
    ``floor(base shape's per-GPU batch / BN_BASE_SIZE)``, so the short
    cycle's larger batches get larger groups
    (``multi_grid.bn_grouping='splits'``).

    Args:
        model (nn.Module): A model converted by :func:`convert_sub_batch_bn`.
        splits (int, optional): Groups per batch, >= 1; None for groups of
            ``base_size``.
    """
    if splits is not None:
        check_count('splits', splits)
    for module in model.modules():
        if is_sub_batch_bn(module):
            module.splits = splits


def plain_bn_layers(model: nn.Module
                    ) -> Tuple[List[Tuple[str, str]], Dict[str, int]]:
    """Normalisation layers that do not compute sub-batch statistics.

    Args:
        model (nn.Module): A model after :func:`convert_sub_batch_bn`.

    Returns:
        tuple: ``[(name, reason)]`` for every BatchNorm layer left plain,
        and ``{class name: count}`` of the layers that normalise each sample
        on its own (GroupNorm, LayerNorm, ...), which the batch size does not
        affect.
    """
    frozen = _eval_in_training(model)
    plain, per_sample = [], {}
    for name, m in model.named_modules():
        if is_sub_batch_bn(m):
            continue
        kind = type(m).__name__
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if id(m) in frozen:
                reason = ('stays in eval mode during training (norm_eval or '
                          'a frozen stage): it uses its running statistics')
            elif isinstance(m, nn.BatchNorm1d):
                reason = ('BatchNorm1d: its rows are not known to be clips; '
                          'statistics over the whole batch')
            else:
                reason = (f'{kind} is not a BatchNorm type the plugin '
                          'converts; statistics over the whole batch')
            plain.append((name, reason))
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm,
                            nn.modules.instancenorm._InstanceNorm,
                            nn.LocalResponseNorm)):
            per_sample[kind] = per_sample.get(kind, 0) + 1
    return plain, per_sample


__all__: Tuple[str, ...] = ('ClipCount', 'SubBatchNorm2d', 'SubBatchNorm3d',
                            'SubBatchNormXd', 'SubBatchSyncBatchNorm',
                            'convert_sub_batch_bn', 'is_sub_batch_bn',
                            'plain_bn_layers')
