"""MultiGridDataPreprocessor against MMAction2's own ActionDataPreprocessor
on batches collated as the multigrid loader collates them."""
import copy

import pytest
import torch
from mmaction.models.data_preprocessors import ActionDataPreprocessor
from mmaction.structures import ActionDataSample

from mmaction_multigrid import multigrid_collate
from mmaction_multigrid.models.data_preprocessor import (
    MultiGridDataPreprocessor, one_block)

ARGS = dict(
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    format_shape='NCTHW')


def _batch(n: int, shapes=None) -> dict:
    gen = torch.Generator().manual_seed(n)
    samples = []
    for i in range(n):
        size = shapes[i] if shapes else (8, 12, 12)
        samples.append(
            dict(
                inputs=torch.randint(
                    0, 255, (1, 3, *size), generator=gen, dtype=torch.uint8),
                data_samples=ActionDataSample().set_gt_labels(i % 5)))
    return multigrid_collate(samples)


def _labels(samples) -> torch.Tensor:
    return torch.cat([s.gt_labels.item for s in samples])


def _check_same_as_stock(batch: dict, training: bool) -> None:
    """Our preprocessor's inputs and labels equal MMAction2's own."""
    stock = ActionDataPreprocessor(**ARGS)(copy.deepcopy(batch), training)
    ours = MultiGridDataPreprocessor(**ARGS)(batch, training)
    torch.testing.assert_close(ours['inputs'], stock['inputs'])
    assert torch.equal(
        _labels(ours['data_samples']), _labels(stock['data_samples']))


@pytest.mark.parametrize('training', [True, False])
def test_same_result_as_stock(training):
    batch = _batch(16)
    _check_same_as_stock(batch, training)


def test_collated_clips_are_one_block_and_others_are_not():
    batch = _batch(6)
    block = one_block(batch['inputs'])
    assert block is not None and block.shape == (6, 1, 3, 8, 12, 12)
    assert torch.equal(block[4], batch['inputs'][4])
    separate = [t.clone() for t in batch['inputs']]
    assert one_block(separate) is None
    assert one_block(batch['inputs'][::2]) is None  # rows not back to back


def test_uneven_batch_falls_back_to_stock_cast():
    # pseudo_collate-like lists (separate tensors) take MMEngine's path
    batch = _batch(3)
    batch['inputs'] = [t.clone() for t in batch['inputs']]
    _check_same_as_stock(batch, True)


def test_state_dict_keys_are_stock():
    assert (MultiGridDataPreprocessor(
        **ARGS).state_dict().keys() == ActionDataPreprocessor(
            **ARGS).state_dict().keys())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_same_result_as_stock():
    batch = _batch(32)
    stock = ActionDataPreprocessor(**ARGS).cuda()(copy.deepcopy(batch), True)
    ours = MultiGridDataPreprocessor(**ARGS).cuda()(batch, True)
    assert ours['inputs'].is_cuda
    torch.testing.assert_close(ours['inputs'], stock['inputs'])
    assert torch.equal(
        _labels(ours['data_samples']).cpu(),
        _labels(stock['data_samples']).cpu())


def test_joined_chunks_copy_once_per_chunk():
    from mmaction_multigrid.datasets.collate import join_batches
    from mmaction_multigrid.models.data_preprocessor import _runs
    chunks = [_batch(4), _batch(4), _batch(3)]
    batch = join_batches(chunks)
    assert _runs(batch['inputs']) == [(0, 4), (4, 8), (8, 11)]
    _check_same_as_stock(batch, True)


def test_built_from_the_converted_config_name():
    from mmaction.registry import MODELS
    built = MODELS.build(dict(type='MultiGridDataPreprocessor', **ARGS))
    assert isinstance(built, MultiGridDataPreprocessor)
