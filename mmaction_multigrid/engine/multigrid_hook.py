"""MultiGridHook: tells what the multigrid schedule does, while it does it."""
import time
from typing import Optional

from mmaction.registry import HOOKS
from mmengine.hooks import Hook

from ..models.model_check import check_input_shapes
from ..models.sub_batch_bn import set_splits
from ..schedule.plan import MultiGridPlan


def schedule_table(plan: MultiGridPlan,
                   base_lr: Optional[float] = None) -> str:
    """The plan as a text table, one line per long-cycle stage, with each
    stage's LR (relative to the stock LR when ``base_lr`` is None)."""
    lines = [
        'stage  epochs     frames  interval  crop (HxW)                  '
        'clips/GPU      lr'
    ]
    for row in plan.describe(base_lr):
        sizes = ' '.join(f'{h}x{w}' for h, w in row['sizes'])
        batch = '/'.join(str(b) for b in row['batch'])
        lines.append(f'{row["stage"]:>5}  {row["begin"]:>3}-{row["end"]:<5}'
                     f'{row["frames"]:>7}  {row["interval"]:>8}  '
                     f'{sizes:<26}  {batch:<12} {row["lr"]:.4g}')
    return '\n'.join(lines)


def video_advice(config: Optional[str]) -> str:
    """The one-line warning for a run that decodes video at every shape."""
    config = config or 'CONFIG'
    return (
        'Multigrid: the train set decodes video files at every shape (no '
        'prepared copy). Decoding costs about the same at 8 frames as at the '
        'stock shape and a multigrid run reads 1.5x the stock clips, so data '
        'loading, not the model, will bound this run on a GPU node (H200, 14 '
        'workers, stock I3D R50: 80% of the first stage\'s iteration time '
        'was the data wait). Once, before training: `python -m '
        f'mmaction_multigrid prepare {config} --out DIR`, then train with '
        f'the config it writes; `python -m mmaction_multigrid plan {config} '
        '--measure` predicts the speed on this machine (docs/data-path.md).')


@HOOKS.register_module()
class MultiGridHook(Hook):
    """Check the model against the schedule and log the schedule as it runs.

    - ``before_train``: one tiny forward of the whole model per distinct
      input shape of the schedule (see
      :func:`~mmaction_multigrid.models.model_check.check_input_shapes`),
      then the schedule table, and a warning with the ``prepare`` command
      when the train set decodes video at every shape (:func:`video_advice`).
    - ``before_train_epoch``: the epoch's stage, frames, crops, clips per GPU
      and iterations; with ``multi_grid.bn_grouping='splits'``, the number
      of BN groups of the stage (``floor(base shape's clips per GPU /
      bn_base_size)``, PySlowFast's ``BN.NUM_SPLITS``) is set on the
      sub-batch BN layers.
    - ``before_train_iter``: the clips, frames and crop size of the batch
      the model receives (``train/clips``, ``train/frames``,
      ``train/crop_h``, ``train/crop_w`` in every log line).

    Everything comes from the run's plan, ``runner.plan``
    (:class:`~mmaction_multigrid.engine.runner.MultiGridRunner`).
    """

    priority = 'NORMAL'

    def before_train(self, runner) -> None:
        plan = runner.plan
        schedule = plan.schedule
        shapes = {(s.clip_len, s.size)
                  for e in range(schedule.max_epochs)
                  for s in schedule.batch_shapes(e)}
        start = time.perf_counter()
        check_input_shapes(runner.model, shapes)
        runner.logger.info(
            f'Multigrid: the model takes all {len(shapes)} input shapes '
            f'(checked in {time.perf_counter() - start:.1f} s).')
        runner.logger.info(
            f'Multigrid schedule ({schedule.max_epochs} epochs instead of '
            f'{schedule.stock_max_epochs}, {sum(plan.epoch_lengths)} '
            f'iterations, {1 / schedule.compute_ratio():.2f}x less '
            'compute):\n' + schedule_table(plan, self._base_lr(runner)))
        if getattr(runner.train_dataloader.dataset, 'decodes_video', False):
            runner.logger.warning(video_advice(runner.cfg.filename))

    @staticmethod
    def _base_lr(runner) -> Optional[float]:
        """The stock base LR of the first parameter group."""
        for group in runner.optim_wrapper.param_groups:
            return group.get('initial_lr', group['lr'])
        return None

    def before_train_epoch(self, runner) -> None:
        plan = runner.plan
        schedule = plan.schedule
        shapes = schedule.batch_shapes(runner.epoch)
        options = plan.options
        groups = ''
        if options.bn_base_size and options.bn_grouping == 'splits':
            splits = max(1, shapes[-1].batch_size // options.bn_base_size)
            set_splits(runner.model, splits)
            groups = f', {splits} BN group(s) per batch'
        runner.logger.info(
            f'Multigrid epoch {runner.epoch}: stage '
            f'{schedule.stage_index(runner.epoch) + 1}/'
            f'{len(schedule.stages)}, {shapes[-1].clip_len} frames '
            f'(interval {shapes[-1].frame_interval}), crops '
            f'{[s.size for s in shapes]}, clips/GPU '
            f'{[s.batch_size for s in shapes]}, '
            f'{plan.epoch_lengths[runner.epoch]} iterations{groups}.')

    def before_train_iter(self,
                          runner,
                          batch_idx: int,
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
