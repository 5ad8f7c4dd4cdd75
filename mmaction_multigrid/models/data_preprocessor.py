"""MultiGridDataPreprocessor: MMAction2's ``ActionDataPreprocessor`` that
moves a collated batch to the device in one copy per field.

MMEngine's ``cast_data`` copies every clip and every data sample's label on
its own and rebuilds every data sample. That CPU time grows with the number
of clips, and multigrid batches hold up to 16x the stock clips: on a GPU
node, where the training process is busy launching kernels, it delayed
every large batch by about a third of a stock iteration. The clips and the
labels that
:func:`~mmaction_multigrid.datasets.collate.multigrid_collate` stacked into
one block per loaded chunk travel here as one copy per chunk.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmaction.models.data_preprocessors import ActionDataPreprocessor
from mmengine.structures import BaseDataElement
from torch import Tensor

Path = Tuple[str, ...]


def one_block(tensors: Sequence[Any]) -> Optional[Tensor]:
    """The tensor whose rows are ``tensors``, when they are contiguous
    tensors of one shape and dtype laid out back to back in one storage
    (views of one stacked tensor); else None."""
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        return None
    first = tensors[0]
    if len(_runs(tensors)) != 1:
        return None
    return first.as_strided((len(tensors), *first.shape),
                            (first.numel(), *first.stride()),
                            first.storage_offset())


def _follows(prev: Tensor, t: Tensor) -> bool:
    """Whether ``t`` is the row right after ``prev`` in one storage."""
    return (t.shape == prev.shape and t.dtype == prev.dtype
            and t.device == prev.device and t.is_contiguous()
            and t.storage_offset() == prev.storage_offset() + prev.numel()
            and t.untyped_storage().data_ptr()
            == prev.untyped_storage().data_ptr())


def _runs(tensors: Sequence[Tensor]) -> List[Tuple[int, int]]:
    """``(start, stop)`` of the maximal runs of back-to-back rows (a batch
    joined from chunks has one run per chunk)."""
    runs, start = [], 0
    for k in range(1, len(tensors) + 1):
        if k == len(tensors) or not (tensors[start].is_contiguous()
                                     and _follows(tensors[k - 1], tensors[k])):
            runs.append((start, k))
            start = k
    return runs


def _tensor_leaves(element: BaseDataElement,
                   prefix: Path = ()) -> Dict[Path, Tensor]:
    """The tensor fields of ``element``, nested elements included."""
    leaves = {}
    for key, value in element.items():
        if isinstance(value, Tensor):
            leaves[prefix + (key, )] = value
        elif isinstance(value, BaseDataElement):
            leaves.update(_tensor_leaves(value, prefix + (key, )))
    return leaves


def _set_leaf(element: BaseDataElement, path: Path, value: Tensor) -> None:
    for key in path[:-1]:
        element = element.get(key)
    setattr(element, path[-1], value)


class MultiGridDataPreprocessor(ActionDataPreprocessor):
    """``ActionDataPreprocessor`` with a batched ``cast_data``.

    A batch's ``inputs`` that are rows of a few tensors (one per loaded
    chunk) are copied to the device as those tensors and handed on as their
    rows; the data samples' tensor
    fields likewise, field by field, set in place on the samples the loader
    produced. Anything else is cast as by MMEngine. The result equals
    ``ActionDataPreprocessor``'s. The multigrid conversion puts this class
    in place of ``ActionDataPreprocessor`` (same arguments and state-dict
    keys).
    """

    def cast_data(self, data: Any) -> Any:
        """Copy ``data`` to the model's device (see the class note)."""
        if not isinstance(data, dict):
            return super().cast_data(data)
        out = {}
        for key, value in data.items():
            if key == 'inputs' and isinstance(value, list):
                out[key] = self._cast_rows(value)
            elif key == 'data_samples' and isinstance(value, list) and all(
                    isinstance(s, BaseDataElement) for s in value):
                out[key] = self._cast_samples(value)
            else:
                out[key] = super().cast_data(value)
        return out

    def _cast_rows(self, tensors: List[Any]) -> List[Any]:
        if not tensors or not all(isinstance(t, Tensor) for t in tensors):
            return super().cast_data(tensors)
        rows: List[Tensor] = []
        for start, stop in _runs(tensors):
            block = one_block(tensors[start:stop])
            if block is None:  # a lone row that is no block
                rows += super().cast_data(tensors[start:stop])
            else:
                rows += block.to(
                    self.device, non_blocking=self._non_blocking).unbind(0)
        return rows

    def _cast_samples(self,
                      samples: List[BaseDataElement]) -> List[BaseDataElement]:
        leaves = [_tensor_leaves(s) for s in samples]
        paths = set(leaves[0])
        if any(set(leaf) != paths for leaf in leaves):
            return super().cast_data(samples)
        for path in paths:
            rows = self._cast_rows([leaf[path] for leaf in leaves])
            for sample, row in zip(samples, rows):
                _set_leaf(sample, path, row)
        return samples
