"""Multigrid training (Wu et al., CVPR 2020) for MMAction2 1.x / MMEngine.

Importing the package registers its components into MMAction2's registries,
installs the switch that trains configs with ``multi_grid`` the multigrid
way (see :mod:`mmaction_multigrid.engine.switch`) and lets ``torch.load``'s
weights-only check accept MMEngine's checkpoints (see
:mod:`mmaction_multigrid.engine.checkpoint_compat`).
"""
from mmaction.registry import MODELS

from .datasets.collate import multigrid_collate
from .datasets.sampler import ShortCycleBatchSampler
from .datasets.transforms import (PreparedFrameInit,
                                  RandomIntervalSampleFrames,
                                  ReducedRawFrameDecode)
from .datasets.wrapper import MultiGridDataset, ShapedIndex
from .engine.checkpoint_compat import allow_mmengine_checkpoints
from .engine.convert import convert_config
from .engine.loop import MultiGridTrainLoop
from .engine.lr import MultiGridLR
from .engine.multigrid_hook import MultiGridHook
from .engine.plan import build_plan
from .engine.precise_bn import PreciseBNHook
from .engine.resume import ExactResumeHook
from .engine.runner import MultiGridRunner
from .engine.switch import install_switch
from .models.sub_batch_bn import SubBatchNorm3d, convert_sub_batch_bn
from .schedule.cycles import MultiGridSchedule
from .schedule.options import MultiGridOptions
from .schedule.plan import MultiGridPlan
from .version import __version__

install_switch()
allow_mmengine_checkpoints()


@MODELS.register_module('MultiGridDataPreprocessor')
def build_data_preprocessor(**kwargs):
    """Build :class:`~mmaction_multigrid.models.data_preprocessor.
    MultiGridDataPreprocessor` (registered as a builder: its module imports
    MMAction2's models, which ``plan`` and ``prepare`` do without)."""
    from .models.data_preprocessor import MultiGridDataPreprocessor
    return MultiGridDataPreprocessor(**kwargs)


__all__ = [
    'ExactResumeHook', 'MultiGridDataset', 'MultiGridHook', 'MultiGridLR',
    'MultiGridOptions', 'MultiGridPlan', 'MultiGridRunner',
    'MultiGridSchedule', 'MultiGridTrainLoop', 'PreciseBNHook',
    'PreparedFrameInit', 'RandomIntervalSampleFrames', 'ReducedRawFrameDecode',
    'ShapedIndex', 'ShortCycleBatchSampler', 'SubBatchNorm3d',
    'allow_mmengine_checkpoints', 'build_plan', 'convert_config',
    'convert_sub_batch_bn', 'install_switch', 'multigrid_collate',
    '__version__'
]
