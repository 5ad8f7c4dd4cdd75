"""Check, before training, that a model accepts every multigrid input shape.

A model whose input shape is fixed (C3D's fully connected layer, the
positional embeddings of TimeSformer) or limited (SlowFast needs at least
``resample_rate`` frames) fails at some multigrid shape; this finds out in a
second, before the first iteration, instead of hours into a run.
"""
from typing import Iterable, Tuple

import torch
from mmengine.model import is_model_wrapper

Size = Tuple[int, int]


def check_input_shapes(model: torch.nn.Module,
                       shapes: Iterable[Tuple[int, Size]]) -> None:
    """Run one clip of each shape through the whole model.

    Backbone, neck and classification head run (``mode='tensor'`` up to
    ``stage='head'``), in eval mode, without gradients; the model's training
    flag is restored.

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
        for clip_len, (h, w) in sorted(set(shapes)):
            inputs = torch.zeros(
                1,
                1,
                3,
                clip_len,
                h,
                w,
                device=param.device,
                dtype=param.dtype)
            try:
                # Testing shapes needs no cuDNN, which would select
                # algorithms for every new shape.
                with torch.no_grad(), torch.backends.cudnn.flags(
                        enabled=False):
                    model(inputs, None, mode='tensor', stage='head')
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
