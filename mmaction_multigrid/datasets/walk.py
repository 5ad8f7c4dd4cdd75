"""Walk nested datasets: MMEngine's stock wrappers around the datasets that
load samples.

A wrapper holds its datasets as ``datasets`` (``ConcatDataset``) or
``dataset`` (``RepeatDataset``, ``ClassBalancedDataset``): as keys of its
config, as attributes once built. Everything else is a leaf.
"""
from collections.abc import Mapping
from typing import Any, List, Tuple


def _children(node: Any) -> List[Any]:
    """The datasets (configs or objects) ``node`` wraps; [] for a leaf."""
    if isinstance(node, Mapping):
        if 'datasets' in node:
            return list(node['datasets'])
        return [node['dataset']] if 'dataset' in node else []
    if hasattr(node, 'datasets'):
        return list(node.datasets)
    return [node.dataset] if hasattr(node, 'dataset') else []


def leaf_datasets(node: Any) -> List[Any]:
    """The leaf datasets under ``node``, in sample order.

    Args:
        node: A dataset config (a dict, keys ``datasets``/``dataset``) or a
            built dataset (attributes ``datasets``/``dataset``).

    Returns:
        list: The leaves, each the very config or object found (``[node]``
        for a leaf), ordered as the wrappers order their samples.
    """
    children = _children(node)
    if not children:
        return [node]
    return [leaf for child in children for leaf in leaf_datasets(child)]


def locate(dataset: Any, index: int) -> Tuple[Any, int]:
    """The leaf dataset that holds sample ``index`` of a built dataset, and
    the sample's index there.

    Maps the index as the wrappers' own ``__getitem__`` does, through their
    ``_get_ori_dataset_idx``: ``ConcatDataset``'s cumulative sizes,
    ``RepeatDataset``'s modulo, ``ClassBalancedDataset``'s
    ``repeat_indices``.

    Args:
        dataset: A built dataset.
        index: Index into ``dataset``.

    Returns:
        tuple: The leaf dataset and the index into it.

    Raises:
        TypeError: if a wrapper under ``dataset`` cannot map indices.
    """
    while _children(dataset):
        if not hasattr(dataset, '_get_ori_dataset_idx'):
            raise TypeError(
                f'{type(dataset).__name__} wraps datasets but does not map '
                'indices to them (`_get_ori_dataset_idx`) as MMEngine\'s '
                'ConcatDataset, RepeatDataset and ClassBalancedDataset do.')
        if hasattr(dataset, 'datasets'):
            part, index = dataset._get_ori_dataset_idx(index)
            dataset = dataset.datasets[part]
        else:
            index = dataset._get_ori_dataset_idx(index)
            dataset = dataset.dataset
    return dataset, index
