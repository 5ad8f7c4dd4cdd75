"""MultiGridHook: keeps the Runner in step with the multigrid schedule."""
import logging
import random
import time
from typing import Dict, Iterable, List, Optional

import numpy as np
import torch
from mmaction.registry import HOOKS
from mmengine.dataset import DefaultSampler
from mmengine.dist import all_gather_object
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch.utils.data import DataLoader

from .bn import SubBatchNorm3d, SubBatchSyncBatchNorm
from .precise_bn import update_bn_stats
from .samplers import ShortCycleBatchSampler
from .schedule import MultiGridSchedule
from .schedulers import MultiGridLR

CKPT_KEY = 'multi_grid'


def schedule_table(schedule: MultiGridSchedule,
                   base_lr: Optional[float] = None) -> str:
    """The schedule as a text table, one line per long-cycle stage."""
    lines = [
        'stage  epochs     frames  interval  crop (HxW)                  '
        'clips/GPU      lr'
    ]
    for row in schedule.describe(base_lr):
        sizes = ' '.join(f'{h}x{w}' for h, w in row['sizes'])
        batch = '/'.join(str(b) for b in row['batch'])
        lines.append(f'{row["stage"]:>5}  {row["begin"]:>3}-{row["end"]:<5}'
                     f'{row["frames"]:>7}  {row["interval"]:>8}  '
                     f'{sizes:<26}  {batch:<12} {row["lr"]:.4g}')
    return '\n'.join(lines)


def _rng_state() -> dict:
    """Python, NumPy and torch CPU random states."""
    return dict(python=random.getstate(), numpy=np.random.get_state(),
                torch=torch.get_rng_state())


def _set_rng_state(state: dict) -> None:
    """Restore what :func:`_rng_state` returned."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if is_model_wrapper(model) else model


def _sub_bn_layers(model: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    return {
        name: m
        for name, m in _unwrap(model).named_modules()
        if isinstance(m, (SubBatchNorm3d, SubBatchSyncBatchNorm))
    }


def _split_stats(model: torch.nn.Module) -> Dict[str, tuple]:
    """Per-group running statistics of the sub-batch BN layers (on CPU).

    They are not in the ``state_dict`` (which stays ``BatchNorm3d``'s); the
    hook keeps them so that a resumed run continues them exactly.
    """
    return {
        name: (m._split_mean.cpu(), m._split_var.cpu())
        for name, m in _sub_bn_layers(model).items()
        if m._split_mean is not None
    }


def _set_split_stats(model: torch.nn.Module, stats: Dict[str,
                                                         tuple]) -> None:
    """Restore what :func:`_split_stats` returned."""
    for name, m in _sub_bn_layers(model).items():
        if name in stats:
            mean, var = stats[name]
            device = m.running_mean.device
            m._split_mean, m._split_var = mean.to(device), var.to(device)


def _local_state(runner) -> dict:
    """What this rank needs to continue exactly: RNG and BN group states."""
    return dict(rng=_rng_state(), sub_bn=_split_stats(runner.model))


@HOOKS.register_module()
class MultiGridHook(Hook):
    """Drive multigrid training from inside the Runner.

    - ``before_train``: checks the model accepts every multigrid input shape
      (one tiny forward each, eval mode, no gradient), gives the epoch
      lengths to ``MultiGridLR``, sets ``max_iters`` (so the ETA is right)
      and logs the schedule table.
    - ``before_train_epoch``: selects the epoch's long-cycle shape in the
      ``ShortCycleBatchSampler``.
    - ``before_train_iter``: logs the clips, frames and crop size of the
      batch the model receives (``train/clips``, ``train/frames``,
      ``train/crop_h``, ``train/crop_w`` in every log line).
    - ``after_train_epoch``: with ``precise_bn``, recomputes BN statistics at
      the default shape before a validation or checkpoint.
    - Checkpoints carry, under ``'multi_grid'``, the schedule settings, the
      train sampler's seed and, per rank, the Python/NumPy/torch random
      states and the sub-batch BN group statistics. A resumed run
      (``--resume``) gets them back in ``before_train`` and continues with
      the same shapes, batch sizes, LR, sample order and augmentations as
      the uninterrupted run; a checkpoint written without the plugin or with
      other ``multi_grid`` settings is resumed on the current schedule from
      its epoch, with a warning. Validation restores the random states it
      found, so that it does not shift them for the next epoch.

    Args:
        precise_bn (dict, optional): ``dict(num_iters=N)`` to recompute BN
            statistics over N default-shape batches. Defaults to None.

    Note:
        Priority ``ABOVE_NORMAL``: ``after_train_epoch`` must run before
        ``CheckpointHook`` (``VERY_LOW``) saves.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, precise_bn: Optional[dict] = None) -> None:
        self.precise_bn = precise_bn
        self._loaded: Optional[tuple] = None
        self._rng_before_val: Optional[dict] = None
        self._rank_states: Optional[tuple] = None

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _sampler(runner) -> ShortCycleBatchSampler:
        sampler = runner.train_dataloader.batch_sampler
        if not isinstance(sampler, ShortCycleBatchSampler):
            raise TypeError('MultiGridHook needs train_dataloader.'
                            'batch_sampler=ShortCycleBatchSampler; convert '
                            'the config with mmaction_multigrid.'
                            'convert_config.')
        return sampler

    @staticmethod
    def _schedulers(runner) -> List[MultiGridLR]:
        schedulers = runner.param_schedulers or []
        if isinstance(schedulers, dict):
            schedulers = [s for group in schedulers.values() for s in group]
        return [s for s in schedulers if isinstance(s, MultiGridLR)]

    def _check_model(self, runner, shapes: Iterable) -> None:
        """One tiny forward per distinct input shape, before training."""
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        param = next(model.parameters())
        was_training = model.training
        model.eval()
        try:
            for clip_len, (h, w) in sorted(shapes):
                inputs = torch.zeros(1, 1, 3, clip_len, h, w,
                                     device=param.device, dtype=param.dtype)
                try:
                    # Shapes only: cuDNN stays out. On an H200 this check
                    # was the likely place of an 81 s stall (batch-1 eval
                    # convolutions at 8 new shapes; not confirmed there).
                    with torch.no_grad(), torch.backends.cudnn.flags(
                            enabled=False):
                        model(inputs, None, mode='tensor')
                except Exception as error:  # any failure means the shape
                    raise ValueError(
                        f'multi_grid: {type(model).__name__} with backbone '
                        f'{type(getattr(model, "backbone", model)).__name__}'
                        f' cannot take the multigrid input of {clip_len} '
                        f'frames x {h}x{w} ({type(error).__name__}: '
                        f'{error}). Models with a fixed input shape (C3D, '
                        'TimeSformer) do not support multigrid; for '
                        'SlowFast use long_cycle_factors whose t_factor '
                        'gives at least resample_rate frames; or remove '
                        '`multi_grid`.') from error
        finally:
            model.train(was_training)

    # -------------------------------------------------------------- hooks
    def before_train(self, runner) -> None:
        sampler = self._sampler(runner)
        schedule = sampler.schedule
        if runner.max_epochs != schedule.max_epochs:
            raise ValueError(
                f'train_cfg.max_epochs={runner.max_epochs} but the multigrid '
                f'schedule has {schedule.max_epochs} epochs; let the '
                'conversion set max_epochs.')
        lengths = [sampler.num_batches(e) for e in range(runner.max_epochs)]
        empty = [e for e, n in enumerate(lengths) if n == 0]
        if empty:
            biggest = max(s.batch_size for s in schedule.batch_shapes(
                empty[0]))
            raise ValueError(
                f'multi_grid: epoch {empty[0]} has no full batch: '
                f'{len(sampler.sampler)} samples per GPU but batches of up '
                f'to {biggest} clips. Use a smaller '
                'train_dataloader.batch_size, more data, or '
                'train_dataloader.drop_last=False.')
        # A resumed run starts at (runner.epoch, runner.iter); the iteration
        # count need not be sum(lengths[:epoch]) when the checkpoint came
        # from another number of GPUs or from a run without multigrid.
        for scheduler in self._schedulers(runner):
            scheduler.set_epoch_lengths(lengths, runner.epoch, runner.iter)
            scheduler.start_at(runner.iter)
        # MMEngine 0.10.7's EpochBasedTrainLoop computes max_iters once as
        # max_epochs * len(dataloader); epochs differ in length here. No
        # public setter exists, so this is the one private write.
        runner.train_loop._max_iters = runner.iter + sum(
            lengths[runner.epoch:])
        shapes = {(s.clip_len, s.size) for e in range(runner.max_epochs)
                  for s in schedule.batch_shapes(e)}
        start = time.perf_counter()
        self._check_model(runner, shapes)
        runner.logger.info(
            f'Multigrid: the model takes all {len(shapes)} input shapes '
            f'(checked in {time.perf_counter() - start:.1f} s).')
        runner.logger.info(
            f'Multigrid schedule ({schedule.max_epochs} epochs instead of '
            f'{schedule.stock_max_epochs}, {sum(lengths)} iterations, '
            f'{1 / schedule.compute_ratio():.2f}x less compute):\n' +
            schedule_table(schedule, self._initial_lr(runner)))
        self._resume(runner)

    @staticmethod
    def _initial_lr(runner) -> Optional[float]:
        """The stock base LR of the first parameter group."""
        for group in runner.optim_wrapper.param_groups:
            return group.get('initial_lr', group['lr'])
        return None

    def before_train_epoch(self, runner) -> None:
        sampler = self._sampler(runner)
        sampler.set_epoch(runner.epoch)
        schedule = sampler.schedule
        index = schedule.stage_index(runner.epoch)
        shapes = schedule.batch_shapes(runner.epoch)
        runner.logger.info(
            f'Multigrid epoch {runner.epoch}: stage {index + 1}/'
            f'{len(schedule.stages)}, {shapes[-1].clip_len} frames '
            f'(interval {shapes[-1].frame_interval}), crops '
            f'{[s.size for s in shapes]}, clips/GPU '
            f'{[s.batch_size for s in shapes]}, {len(sampler)} iterations.')

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch: Optional[dict] = None) -> None:
        inputs = (data_batch or {}).get('inputs')
        if not inputs:
            return
        shape = inputs[0].shape  # (clips x crops, C, T, H, W)
        hub = runner.message_hub
        hub.update_scalar('train/clips', len(inputs))
        hub.update_scalar('train/frames', shape[-3])
        hub.update_scalar('train/crop_h', shape[-2])
        hub.update_scalar('train/crop_w', shape[-1])

    def after_train_epoch(self, runner) -> None:
        if self.precise_bn is not None and self._evaluates_or_saves(runner):
            self._precise_bn(runner)
        if runner.world_size > 1:
            # MMEngine 0.10.7 runs Runner.save_checkpoint (and so
            # before_save_checkpoint) on rank 0 only: the other ranks'
            # states are collected here, where every rank passes.
            self._rank_states = (runner.epoch,
                                 all_gather_object(_local_state(runner)))

    def _precise_bn(self, runner) -> None:
        """Recompute BN statistics over default-shape batches."""
        dataloader = runner.train_dataloader
        seed = getattr(self._sampler(runner).sampler, 'seed', None)
        # Each rank takes its own share of the data (the statistics are
        # averaged over the ranks), in an order fixed by seed and epoch.
        sampler = DefaultSampler(
            dataloader.dataset, shuffle=True,
            seed=runner.seed if seed is None else seed)
        sampler.set_epoch(runner.epoch)
        loader = DataLoader(
            dataloader.dataset,
            batch_size=self._sampler(runner).batch_size,
            sampler=sampler,
            num_workers=dataloader.num_workers,
            collate_fn=dataloader.collate_fn,
            drop_last=True)
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model

        def forward(batch: dict):
            data = model.data_preprocessor(batch, True)
            return model(**data, mode='tensor')

        used = update_bn_stats(model, loader,
                               self.precise_bn.get('num_iters', 200),
                               forward)
        runner.logger.info(f'Precise BN: BN statistics recomputed at the '
                           f'default shape over {used} batches.')

    @staticmethod
    def _evaluates_or_saves(runner) -> bool:
        """Whether validation or a checkpoint follows this epoch."""
        epoch = runner.epoch + 1
        if epoch == runner.max_epochs:
            return True
        loop = runner.train_loop
        if (runner.val_loop is not None and epoch >= loop.val_begin
                and epoch % loop.val_interval == 0):
            return True
        for hook in runner.hooks:
            interval = getattr(hook, 'interval', None)
            if (type(hook).__name__ == 'CheckpointHook' and interval
                    and interval > 0 and epoch % interval == 0):
                return True
        return False

    # ---------------------------------------------------------- resume
    def before_val(self, runner) -> None:
        self._rng_before_val = _rng_state()

    def after_val(self, runner) -> None:
        # Validation leaves the random streams as it found them: a run
        # resumed from the checkpoint saved just before validation then
        # draws the same numbers as the uninterrupted run.
        state = self._rng_before_val
        if state is not None:
            _set_rng_state(state)
            self._rng_before_val = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        sampler = self._sampler(runner)
        ranks = [None] * runner.world_size
        if self._rank_states is not None and self._rank_states[
                0] == runner.epoch:
            ranks = list(self._rank_states[1])
        ranks[runner.rank] = _local_state(runner)
        checkpoint[CKPT_KEY] = dict(
            schedule=dict(sampler.schedule.args,
                          batch_size=sampler.batch_size),
            sampler_seed=getattr(sampler.sampler, 'seed', None),
            ranks=ranks)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Acted on in before_train: MMEngine loads the weights (which resets
        # sub-batch BN groups) and may reseed the RNGs after this hook, and
        # only then is it known whether this was a resume or a `load_from`.
        self._loaded = checkpoint.get(CKPT_KEY, {}), checkpoint.get(
            'meta', {}).get('epoch', 0)

    def _resume(self, runner) -> None:
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
                'LR from that epoch on).', logger='current',
                level=logging.WARNING)
            return
        sampler = self._sampler(runner)
        current = dict(sampler.schedule.args, batch_size=sampler.batch_size)
        saved = state.get('schedule', {})
        if saved != current:
            changed = sorted(k for k in current if saved.get(k) != current[k])
            print_log(
                f'multi_grid: the checkpoint was trained with other '
                f'multigrid settings ({", ".join(changed)} differ); '
                f'training continues from epoch {epoch} on the schedule of '
                'the current config.', logger='current',
                level=logging.WARNING)
        ranks = state.get('ranks') or []
        if ranks:
            mine = ranks[0]
            if len(ranks) == runner.world_size and ranks[runner.rank]:
                mine = ranks[runner.rank]
            _set_rng_state(mine['rng'])
            _set_split_stats(runner.model, mine.get('sub_bn', {}))
        seed = state.get('sampler_seed')
        if seed is not None and hasattr(sampler.sampler, 'seed'):
            sampler.sampler.seed = seed
