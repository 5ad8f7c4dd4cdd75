"""Multigrid training (Wu et al., CVPR 2020) for MMAction2 1.x / MMEngine.

Importing the package registers its components into MMAction2's registries,
installs the switch that trains configs with ``multi_grid`` the multigrid
way (see :mod:`mmaction_multigrid.runner`) and lets ``torch.load``'s
weights-only check accept MMEngine's checkpoints (see
:mod:`mmaction_multigrid.checkpoint_compat`).
"""
from mmaction.registry import MODELS

from .bn import SubBatchNorm3d, convert_sub_batch_bn
from .checkpoint_compat import allow_mmengine_checkpoints
from .collate import multigrid_collate
from .convert import convert_config, validate_options
from .datasets import MultiGridDataset, ShapedIndex
from .hooks import MultiGridHook
from .loops import MultiGridTrainLoop
from .precise_bn import PreciseBNHook
from .resume import ExactResumeHook
from .runner import MultiGridRunner, install_switch
from .samplers import ShortCycleBatchSampler
from .schedule import MultiGridSchedule
from .schedulers import MultiGridLR
from .transforms import (PreparedFrameInit, RandomIntervalSampleFrames,
                         ReducedRawFrameDecode)
from .version import __version__

install_switch()
allow_mmengine_checkpoints()


@MODELS.register_module('MultiGridDataPreprocessor')
def build_data_preprocessor(**kwargs):
    """Build :class:`~mmaction_multigrid.data_preprocessor.
    MultiGridDataPreprocessor` (registered as a builder: its module imports
    MMAction2's models, which ``plan`` and ``prepare`` do without)."""
    from .data_preprocessor import MultiGridDataPreprocessor
    return MultiGridDataPreprocessor(**kwargs)


__all__ = [
    'ExactResumeHook', 'MultiGridDataset', 'MultiGridHook', 'MultiGridLR',
    'MultiGridRunner', 'MultiGridSchedule', 'MultiGridTrainLoop',
    'PreciseBNHook', 'PreparedFrameInit', 'RandomIntervalSampleFrames',
    'ReducedRawFrameDecode', 'ShapedIndex', 'ShortCycleBatchSampler',
    'SubBatchNorm3d', 'allow_mmengine_checkpoints', 'convert_config',
    'convert_sub_batch_bn', 'install_switch', 'multigrid_collate',
    'validate_options', '__version__'
]
