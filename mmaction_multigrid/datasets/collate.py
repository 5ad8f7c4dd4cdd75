"""``multigrid_collate``: a batch handed over as a few shared-memory blocks.

MMEngine's ``pseudo_collate`` returns one tensor per clip (and one label
tensor per data sample). A worker process passes every tensor to the
training process as its own shared-memory block, which costs the training
process a fixed time per tensor; multigrid batches hold up to 16x the stock
clips, so that cost grows with them. Stacking the clips and the labels each
into one tensor in the worker makes it one block per field, whatever the
batch size.
"""
from typing import Any, List, Sequence

import torch
from mmengine.dataset import pseudo_collate
from mmengine.registry import FUNCTIONS
from mmengine.structures import BaseDataElement
from torch import Tensor


def _same_shape_tensors(values: Sequence) -> bool:
    """Whether ``values`` are tensors of one shape, dtype and device."""
    return all(isinstance(v, Tensor)
               for v in values) and len({(v.shape, v.dtype, v.device)
                                         for v in values}) == 1


def _stacked_views(tensors: Sequence[Tensor]) -> List[Tensor]:
    """The tensors as views of one stacked tensor (one storage)."""
    return list(torch.stack(list(tensors)).unbind(0))


def _share_fields(elements: Sequence[BaseDataElement]) -> None:
    """Give the same-shape tensor fields of ``elements`` one storage each."""
    for key in elements[0].keys():
        if not all(key in e for e in elements):
            continue
        values = [e.get(key) for e in elements]
        if _same_shape_tensors(values):
            for element, view in zip(elements, _stacked_views(values)):
                setattr(element, key, view)
        elif all(isinstance(v, BaseDataElement) for v in values):
            _share_fields(values)


@FUNCTIONS.register_module()
def multigrid_collate(data_batch: Sequence[dict]) -> dict:
    """``pseudo_collate`` whose tensors share one storage per field.

    The result has the same structure and values as ``pseudo_collate``: a
    list of per-clip ``inputs`` (views of one tensor) and the data samples,
    whose same-shape tensor fields (the labels) are likewise views. Fields
    whose shapes differ across the batch are left as they are.

    Args:
        data_batch (Sequence[dict]): Samples from the dataset.

    Returns:
        dict: The collated batch.
    """
    batch = pseudo_collate(data_batch)
    if not isinstance(batch, dict):
        return batch
    inputs = batch.get('inputs')
    if inputs and _same_shape_tensors(inputs):
        batch['inputs'] = _stacked_views(inputs)
    samples = batch.get('data_samples')
    if samples and all(isinstance(s, BaseDataElement) for s in samples):
        _share_fields(samples)
    return batch


def join_batches(parts: Sequence[Any]) -> Any:
    """One batch from consecutive collated chunks of it: lists are
    concatenated, tensors too (along the first dimension), dicts key by
    key.

    Args:
        parts (Sequence): Collated chunks, in order.

    Returns:
        The collated batch.
    """
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, dict):
        return {key: join_batches([p[key] for p in parts]) for key in first}
    if isinstance(first, (list, tuple)):
        return type(first)(x for p in parts for x in p)
    if isinstance(first, Tensor):
        return torch.cat(list(parts))
    raise TypeError(f'cannot join batch chunks of type {type(first)}')
