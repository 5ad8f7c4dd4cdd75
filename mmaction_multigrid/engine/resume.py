"""ExactResumeHook: what a resumed multigrid run needs beyond MMEngine's
checkpoint to continue exactly as the uninterrupted run."""
import logging
from typing import Dict, Optional, Tuple

import torch
from mmaction.registry import HOOKS
from mmengine.dist import all_gather_object
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import Tensor

from ..datasets.rng import rng_state, set_rng_state

CKPT_KEY = 'multi_grid'


def _sub_bn_layers(model: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    """Sub-batch BN layers of ``model`` by name."""
    model = model.module if is_model_wrapper(model) else model
    return {
        name: m
        for name, m in model.named_modules()
        if callable(getattr(m, 'split_stats', None))
    }


def split_stats(model: torch.nn.Module) -> Dict[str, Tuple[Tensor, Tensor]]:
    """Per-group running statistics of the sub-batch BN layers, on CPU.

    They are not in the ``state_dict`` (which stays ``BatchNorm3d``'s).
    """
    stats = {}
    for name, layer in _sub_bn_layers(model).items():
        state = layer.split_stats()
        if state is not None:
            stats[name] = tuple(t.cpu() for t in state)
    return stats


def load_split_stats(model: torch.nn.Module,
                     stats: Dict[str, Tuple[Tensor, Tensor]]) -> None:
    """Restore what :func:`split_stats` returned."""
    for name, layer in _sub_bn_layers(model).items():
        if name in stats:
            layer.load_split_stats(*stats[name])


def _local_state(runner) -> dict:
    """What this rank needs to continue exactly: RNG and BN group states."""
    return dict(rng=rng_state(), sub_bn=split_stats(runner.model))


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """Keep in the checkpoint what an exact resume of a multigrid run needs.

    Checkpoints carry, under ``'multi_grid'``, the schedule settings, the
    train sampler's seed and, per rank, the Python/NumPy/torch random
    states of the training process (dropout, for one) and the sub-batch BN
    group statistics. A resumed run (``--resume``) gets them back in
    ``before_train``. A checkpoint written without the plugin or with other
    ``multi_grid`` settings is resumed on the current schedule from its
    epoch, with a warning. Validation restores the random states it found,
    so that a run resumed from the checkpoint saved just before a
    validation draws the same numbers as the uninterrupted run. Data
    augmentation needs nothing here: every sample is seeded from its
    position in the run (see :class:`~mmaction_multigrid.datasets.sampler.
    ShortCycleBatchSampler`).

    Note:
        MMEngine 0.10.7 calls ``before_save_checkpoint`` on rank 0 only, so
        the other ranks' states are gathered in ``after_train_epoch``, where
        every rank passes (priority ``ABOVE_NORMAL``: before
        ``CheckpointHook`` saves).
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self) -> None:
        self._loaded: Optional[tuple] = None
        self._rng_before_val: Optional[dict] = None
        self._rank_states: Optional[tuple] = None

    @staticmethod
    def _sampler(runner):
        return runner.train_loop.dataloader.batch_sampler

    def before_val(self, runner) -> None:
        self._rng_before_val = rng_state()

    def after_val(self, runner) -> None:
        if self._rng_before_val is not None:
            set_rng_state(self._rng_before_val)
            self._rng_before_val = None

    def after_train_epoch(self, runner) -> None:
        if runner.world_size > 1:
            self._rank_states = (runner.epoch,
                                 all_gather_object(_local_state(runner)))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        ranks = [None] * runner.world_size
        if self._rank_states is not None and self._rank_states[
                0] == runner.epoch:
            ranks = list(self._rank_states[1])
        ranks[runner.rank] = _local_state(runner)
        checkpoint[CKPT_KEY] = dict(
            schedule=runner.plan.settings(),
            sampler_seed=getattr(self._sampler(runner).sampler, 'seed', None),
            ranks=ranks)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Acted on in before_train: MMEngine loads the weights (which resets
        # sub-batch BN groups) and may reseed the RNGs after this hook, and
        # only then is it known whether this was a resume or a `load_from`.
        self._loaded = checkpoint.get(CKPT_KEY,
                                      {}), checkpoint.get('meta',
                                                          {}).get('epoch', 0)

    def before_train(self, runner) -> None:
        """On a resumed run, say what continues and restore the random
        states, sampler seed and sub-batch BN groups of the checkpoint."""
        loaded, self._loaded = self._loaded, None
        if loaded is None or runner.iter == 0:  # fresh run or `load_from`
            return
        state, epoch = loaded
        if not state:
            print_log(
                'multi_grid: this checkpoint was written without '
                'mmaction-multigrid; training continues on the multigrid '
                f'schedule from epoch {epoch} (its shapes, batch sizes and '
                'LR from that epoch on).',
                logger='current',
                level=logging.WARNING)
            return
        current = runner.plan.settings()
        saved = state.get('schedule', {})
        if saved != current:
            changed = sorted(k for k in current if saved.get(k) != current[k])
            print_log(
                f'multi_grid: the checkpoint was trained with other '
                f'multigrid settings ({", ".join(changed)} differ); '
                f'training continues from epoch {epoch} on the schedule of '
                'the current config.',
                logger='current',
                level=logging.WARNING)
        ranks = state.get('ranks') or []
        if ranks:
            mine = ranks[0]
            if len(ranks) == runner.world_size and ranks[runner.rank]:
                mine = ranks[runner.rank]
            set_rng_state(mine['rng'])
            load_split_stats(runner.model, mine.get('sub_bn', {}))
        seed = state.get('sampler_seed')
        sampler = self._sampler(runner).sampler
        if seed is not None and hasattr(sampler, 'seed'):
            sampler.seed = seed
