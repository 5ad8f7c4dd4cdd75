"""Check, before training, that a model accepts every multigrid input shape.

A model whose input shape is fixed (C3D's fully connected layer, the
positional embeddings of TimeSformer) or limited (SlowFast needs at least
``resample_rate`` frames) fails at some multigrid shape; this finds out in a
second, before the first iteration, instead of hours into a run.

Shapes are checked on the ``meta`` device: a copy of the model whose
parameters and buffers are meta tensors runs the forward, which works out
every output shape (and raises where a shape does not fit) without
computing a number, so its cost depends neither on the device nor on the
input size (about 0.05 s a shape for I3D R50). A shape whose meta forward
fails (a real shape error, or an operation without a meta kernel) is run
again on the model's own device, whose error, if any, is the one reported.
"""
import copy
from typing import Iterable, Optional, Tuple

import torch
from mmengine.model import is_model_wrapper

Size = Tuple[int, int]
META = torch.device('meta')


def meta_copy(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """A copy of ``model`` whose parameters and buffers are meta tensors of
    the same shapes and dtypes (no data is copied), or None if the model
    cannot be copied.

    The copy shares nothing with ``model``, so whatever its forward stores
    on its modules (cached masks, counters) stays on the copy.
    """
    memo = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        meta = torch.empty_like(tensor, device=META)
        if isinstance(tensor, torch.nn.Parameter):
            meta = torch.nn.Parameter(meta, tensor.requires_grad)
        memo[id(tensor)] = meta
    try:
        return copy.deepcopy(model, memo)
    except Exception:  # an attribute that cannot be copied: check for real
        return None


def _forward(model: torch.nn.Module, clip_len: int, size: Size,
             device: torch.device, dtype: torch.dtype) -> None:
    """One clip of ``clip_len`` frames of ``size`` through backbone, neck
    and head."""
    inputs = torch.zeros(1, 1, 3, clip_len, *size, device=device, dtype=dtype)
    # Without cuDNN: at one clip PyTorch's own 3D convolutions are fast (on
    # an H200 about 15 ms a shape for I3D R50), while cuDNN sets up its
    # kernels for every new shape (60-90 ms, and about 1 s the first time).
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=False):
        model(inputs, None, mode='tensor', stage='head')


def check_input_shapes(model: torch.nn.Module,
                       shapes: Iterable[Tuple[int, Size]]) -> None:
    """Run one clip of each shape through the whole model.

    Backbone, neck and classification head run (``mode='tensor'`` up to
    ``stage='head'``), in eval mode, without gradients, on a meta copy of
    the model (see the module docstring), or on the model itself for a
    shape that the meta copy cannot take; the model's training flag is
    restored.

    Args:
        model: The recogniser (possibly wrapped, e.g. by DDP).
        shapes: ``(frames, (height, width))`` of each input to check.

    Raises:
        ValueError: naming the shape that fails and what to do.
    """
    model = model.module if is_model_wrapper(model) else model
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        meta = meta_copy(model)
        for clip_len, (h, w) in sorted(set(shapes)):
            if meta is not None:
                try:
                    _forward(meta, clip_len, (h, w), META, param.dtype)
                    continue
                except Exception:  # ask the real device what fails
                    pass
            try:
                _forward(model, clip_len, (h, w), param.device, param.dtype)
            except Exception as error:  # any failure means the shape
                raise ValueError(
                    f'multi_grid: {type(model).__name__} with backbone '
                    f'{type(getattr(model, "backbone", model)).__name__} '
                    f'cannot take the multigrid input of {clip_len} frames x '
                    f'{h}x{w} ({type(error).__name__}: {error}). Models with '
                    'a fixed input shape (C3D, TimeSformer) do not support '
                    'multigrid; for SlowFast use long_cycle_factors whose '
                    't_factor gives at least resample_rate frames; or '
                    'remove `multi_grid`.') from error
    finally:
        model.train(was_training)
