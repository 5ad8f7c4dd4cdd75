"""The multigrid schedule: shapes, long-cycle stages, batch sizes and LR.

Pure Python (no torch, no mmengine) so that it can be tested on its own and
used by ``python -m mmaction_multigrid plan`` without building anything. The
numbers follow Wu et al., "A Multigrid Method for Efficiently Training Video
Models" (CVPR 2020) and its authors' PySlowFast (see ``docs/method.md``).
"""
import bisect
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from . import lr_rules
from .options import DEFAULT_LONG_CYCLE_FACTORS, DEFAULT_SHORT_CYCLE_FACTORS

Size = Tuple[int, int]


@dataclass(frozen=True)
class Shape:
    """A long-cycle shape.

    Attributes:
        batch: Batch multiplier relative to the stock per-GPU batch.
        frames: Clip length in frames.
        size: Spatial output size ``(height, width)``.
    """
    batch: int
    frames: int
    size: Size


@dataclass(frozen=True)
class Stage:
    """One entry of the long-cycle schedule.

    Attributes:
        lr_stage: Index of the stock LR stage it belongs to (0 before the
            first milestone).
        shape: Base shape trained during the entry.
        end_epoch: First epoch after the entry (exclusive end).
    """
    lr_stage: int
    shape: Shape
    end_epoch: int


@dataclass(frozen=True)
class BatchShape:
    """What one mini-batch of one GPU looks like.

    Attributes:
        batch_size: Clips in the batch (per GPU).
        clip_len: Frames per clip.
        frame_interval: Temporal stride between sampled frames.
        size: Spatial output size ``(height, width)``.
    """
    batch_size: int
    clip_len: int
    frame_interval: int
    size: Size


def batch_multiplier(default: Tuple[float, float, float],
                     shape: Tuple[float, float, float]) -> int:
    """Batch multiplier that keeps the per-sample cost ``t*h*w`` constant.

    Args:
        default: Default ``(frames, height, width)``.
        shape: Reduced ``(frames, height, width)``, possibly unrounded.

    Returns:
        int: ``round(T*H*W / (t*h*w))``.
    """
    return int(round(math.prod(default) / math.prod(shape)))


def num_batches(num_samples: int, batch_sizes: Sequence[int],
                drop_last: bool) -> int:
    """Number of batches of one epoch that cycles through ``batch_sizes``.

    With ``drop_last`` the reference count ``floor(n / mean(batch_sizes))``;
    otherwise enough batches to see every sample once.

    Args:
        num_samples: Samples the (per-rank) sampler yields in one epoch.
        batch_sizes: The batch sizes cycled through, iteration by iteration.
        drop_last: Whether an incomplete last batch is dropped.

    Returns:
        int: The number of batches.
    """
    mean = sum(batch_sizes) / len(batch_sizes)
    if drop_last:
        return int(math.floor(num_samples / mean))
    count, seen = 0, 0
    while seen < num_samples:
        seen += batch_sizes[count % len(batch_sizes)]
        count += 1
    return count


class MultiGridSchedule:
    """Long- and short-cycle multigrid schedule of one training run.

    Built by :func:`mmaction_multigrid.engine.plan.build_plan` from checked
    options (:class:`~mmaction_multigrid.schedule.options.MultiGridOptions`)
    and the stock config.

    Args:
        clip_len: ``T``, frames per clip of the stock pipeline.
        frame_interval: ``r``, frame interval of the stock pipeline.
        size: ``S`` as ``(height, width)`` or an int for a square size.
        max_epochs: ``E``, the stock number of epochs.
        milestones: Epochs at which the stock step schedule multiplies the
            LR by ``gamma``; empty for any other schedule.
        batch_size: ``B``, the stock per-GPU batch size; only the batch
            sizes depend on it. Defaults to 1.
        gamma: LR decay factor of a step schedule. Defaults to 0.1.
        warmup_epochs: Length of a step schedule's linear warm-up in epochs,
            0 for none. Defaults to 0.
        warmup_start_factor: LR factor at the start of the warm-up.
            Defaults to 0.1.
        long_cycle: Whether to use long cycles. Defaults to True.
        short_cycle: Whether to use short cycles. Defaults to True.
        long_cycle_factors: ``(t_factor, s_factor)`` of each long-cycle shape.
        short_cycle_factors: Spatial factors of the two smaller short-cycle
            shapes.
        epoch_factor: Total epochs relative to the stock run.
            Defaults to 1.5.
        num_long_cycles: Without ``milestones`` and with long cycles, the
            number of equal phases the long cycle repeats over.
            Defaults to 2.
        fine_tune_share: Without ``milestones`` and with long cycles, the
            share of the stock epochs trained at the default shape at the
            end. Defaults to 0.2.
        lr_scaling: How the LR follows the batch multiplier ``b`` of the
            long-cycle base shape: ``'linear'`` (``b``, the reference),
            ``'sqrt'`` or ``'none'``. Defaults to ``'linear'``.
        short_cycle_lr: ``'constant'`` (the reference: every short-cycle
            batch trains at its base shape's LR) or ``'scaled'`` (the LR of
            each batch also follows its size relative to the base shape's
            batch, by ``lr_scaling``). Defaults to ``'constant'``.
    """

    def __init__(self,
                 clip_len: int,
                 frame_interval: int,
                 size,
                 max_epochs: int,
                 milestones: Sequence[int],
                 batch_size: int = 1,
                 gamma: float = 0.1,
                 warmup_epochs: int = 0,
                 warmup_start_factor: float = 0.1,
                 long_cycle: bool = True,
                 short_cycle: bool = True,
                 long_cycle_factors: Sequence[Sequence[float]] = (
                     DEFAULT_LONG_CYCLE_FACTORS),
                 short_cycle_factors: Sequence[float] = (
                     DEFAULT_SHORT_CYCLE_FACTORS),
                 epoch_factor: float = 1.5,
                 num_long_cycles: int = 2,
                 fine_tune_share: float = 0.2,
                 lr_scaling: str = 'linear',
                 short_cycle_lr: str = 'constant') -> None:
        self.lr_scaling = lr_scaling
        self.short_cycle_lr = short_cycle_lr
        self.clip_len = clip_len
        self.frame_interval = frame_interval
        self.size: Size = (size,
                           size) if isinstance(size, int) else tuple(size)
        self.batch_size = batch_size
        self.stock_max_epochs = max_epochs
        self.step_rule = bool(milestones)
        self.stock_milestones = list(milestones)
        self.gamma = gamma
        self.warmup_epochs = warmup_epochs
        self.warmup_start_factor = warmup_start_factor
        self.long_cycle = long_cycle
        self.short_cycle = short_cycle
        self.long_cycle_factors = [tuple(f) for f in long_cycle_factors]
        self.short_cycle_factors = list(short_cycle_factors)
        self.epoch_factor = epoch_factor
        # Any other schedule: the long cycle repeats over equal phases as
        # over a step schedule's LR stages (lr_rules.phase_ends).
        if not self.step_rule and long_cycle:
            self.stock_milestones = lr_rules.phase_ends(
                max_epochs, num_long_cycles, fine_tune_share)
        self.default_shape = Shape(1, clip_len, self.size)
        if long_cycle:
            self.stages = self._long_cycle_stages()
            self.max_epochs = self.stages[-1].end_epoch
            self.milestones = [s.end_epoch for s in self.stages[:-1]]
        else:
            self.max_epochs = int(max_epochs * epoch_factor)
            self.milestones = [int(m * epoch_factor) for m in milestones]
            self.stages = [
                Stage(i, self.default_shape, end)
                for i, end in enumerate(self.milestones + [self.max_epochs])
            ]
        self._check_nonempty()
        # Read every iteration by the LR scheduler: computed once.
        self._lr_points = self._compute_lr_points()
        self._lr_spans = self._compute_lr_spans()

    def _check_nonempty(self) -> None:
        """Fail on a schedule without epochs or with an empty batch.

        Frames and sizes of 0 are refused where the shapes are made
        (:meth:`_shape`); the short-cycle batch ``k * b`` can still be 0:
        ``k = round((s_base / (f * S))**2)`` is 0 when a long-cycle crop
        is below about ``0.71 * f * S``.

        Raises:
            ValueError: naming the ``multi_grid`` key and the fix.
        """
        if self.max_epochs < 1:
            raise ValueError(
                f'multi_grid.epoch_factor={self.epoch_factor!r} gives 0 '
                f'epochs for max_epochs={self.stock_max_epochs}; use a '
                'larger epoch_factor.')
        for stage in self.stages:
            for (batch, size), factor in zip(
                    self.short_cycle_sizes(stage.shape),
                    self.short_cycle_factors):
                if batch < 1:
                    raise ValueError(
                        'multi_grid.long_cycle_factors: the long-cycle crop '
                        f'{stage.shape.size} gives short-cycle batches of 0 '
                        f'clips at {size} (short_cycle_factors {factor:.4g}:'
                        f' k = round(({stage.shape.size[0]} / ({factor:.4g}'
                        f' * {self.size[0]}))**2) = 0). Use s_factors above '
                        f'{factor * 0.5**0.5:.3g}, smaller '
                        'multi_grid.short_cycle_factors, or '
                        'short_cycle=False.')

    # ----------------------------------------------------------- shapes --
    def _scaled_size(self, factor: float) -> Tuple[float, float]:
        """Spatial size scaled by ``factor`` on both sides, unrounded."""
        return (self.size[0] * factor, self.size[1] * factor)

    def _shape(self, frames: int, size: Tuple[float, float]) -> Shape:
        """Shape of ``frames`` x ``size`` with its cost-keeping batch.

        Raises:
            ValueError: if the shape rounds to 0 frames or pixels.
        """
        if frames < 1:
            raise ValueError(
                'multi_grid.long_cycle_factors: a t_factor gives 0 frames '
                f'for clip_len={self.clip_len}; use larger factors.')
        if min(round(size[0]), round(size[1])) < 1:
            raise ValueError(
                'multi_grid.long_cycle_factors/short_cycle_factors: a '
                f'factor rounds default_s={self.size} to 0 pixels; use '
                'larger factors.')
        batch = batch_multiplier((self.clip_len, ) + self.size,
                                 (frames, ) + tuple(size))
        return Shape(batch, frames, (int(round(size[0])), int(round(size[1]))))

    def long_cycle_shapes(self) -> List[List[Shape]]:
        """Shapes of each long-cycle entry.

        Returns:
            list[list[Shape]]: per long-cycle factor, the short-cycle shapes
            (two smaller sizes, then the base one) or just the base shape
            when short cycles are off.
        """
        all_shapes = []
        for t_factor, s_factor in self.long_cycle_factors:
            frames = int(round(self.clip_len * t_factor))
            base = tuple(round(x) for x in self._scaled_size(s_factor))
            sizes = [base]
            if self.short_cycle:
                sizes = [
                    self._scaled_size(f) for f in self.short_cycle_factors
                ] + sizes
            all_shapes.append([self._shape(frames, s) for s in sizes])
        return all_shapes

    def _long_cycle_stages(self) -> List[Stage]:
        """Long-cycle schedule, stretched to ``E * epoch_factor`` epochs.

        As PySlowFast's ``get_long_cycle_schedule``
        (``slowfast/utils/multigrid.py``): one entry per LR stage and
        long-cycle factor, then a fine-tuning entry at the base shape of the
        LAST long-cycle entry (PySlowFast's ``all_shapes[-1][2]``, the third
        of its short-cycle shapes). That is the default shape only when the
        factors end in ``(1, 1)``. With short cycles off, PySlowFast's index
        2 does not exist (IndexError); the last entry's only shape, its base
        shape again, is used.
        """
        all_shapes = self.long_cycle_shapes()
        avg_b = [
            sum(s.batch for s in shapes) / len(shapes) for shapes in all_shapes
        ]
        steps = [0] + self.stock_milestones
        entries, iters = [], 0.0
        for i in range(len(steps) - 1):
            for j, shapes in enumerate(all_shapes):
                epochs = (steps[i + 1] - steps[i]) * avg_b[j] / sum(avg_b)
                iters += epochs / avg_b[j]
                entries.append((i, shapes[-1], epochs))
        iter_saving = steps[-1] / iters if iters else 1.0
        ft_epochs = (self.stock_max_epochs -
                     steps[-1]) / iter_saving * avg_b[-1]
        entries.append((len(steps) - 1, all_shapes[-1][-1], ft_epochs))
        x = self.stock_max_epochs * self.epoch_factor / sum(e[2]
                                                            for e in entries)
        stages, total = [], 0.0
        for lr_stage, shape, epochs in entries:
            total += epochs * x
            stages.append(Stage(lr_stage, shape, int(round(total))))
        return stages

    # ------------------------------------------------------ per epoch --
    def stage_index(self, epoch: int) -> int:
        """Index into :attr:`stages` of the entry that trains ``epoch``."""
        for i, stage in enumerate(self.stages):
            if stage.end_epoch > epoch:
                return i
        return len(self.stages) - 1

    def base_shape(self, epoch: int) -> Shape:
        """Long-cycle base shape of ``epoch`` (0-based)."""
        return self.stages[self.stage_index(epoch)].shape

    def short_cycle_sizes(self, base: Shape) -> List[Tuple[int, Size]]:
        """Batch factors and spatial sizes of the short cycle of ``base``.

        Args:
            base: A long-cycle base shape.

        Returns:
            list[tuple[int, Size]]: ``(k_i * b, size_i)`` for each
            short-cycle iteration, in order; one entry when short cycles
            are off.
        """
        cycle = [(base.batch, base.size)]
        if self.short_cycle:
            smaller = []
            for factor in self.short_cycle_factors:
                k = int(round((base.size[0] / (factor * self.size[0]))**2))
                size = tuple(int(round(x)) for x in self._scaled_size(factor))
                smaller.append((base.batch * k, size))
            cycle = smaller + cycle
        return cycle

    def batch_shapes(self, epoch: int) -> List[BatchShape]:
        """Per-GPU mini-batch shapes that ``epoch`` cycles through.

        Args:
            epoch: 0-based epoch.

        Returns:
            list[BatchShape]: three shapes with short cycles, else one.
        """
        base = self.base_shape(epoch)
        interval = max(
            1, int(round(self.frame_interval * self.clip_len / base.frames)))
        return [
            BatchShape(self.batch_size * b, base.frames, interval, size)
            for b, size in self.short_cycle_sizes(base)
        ]

    def num_batches(self,
                    epoch: int,
                    num_samples: int,
                    drop_last: bool = True) -> int:
        """Iterations of ``epoch`` for a sampler of ``num_samples`` samples."""
        sizes = [s.batch_size for s in self.batch_shapes(epoch)]
        return num_batches(num_samples, sizes, drop_last)

    # -------------------------------------------------------------- LR --
    def lr_points(self) -> Tuple[List[int], List[float]]:
        """LR change points (epochs) and the relative LR from each point.

        Returns:
            tuple[list[int], list[float]]: change points and relative LRs.
        """
        return list(self._lr_points[0]), list(self._lr_points[1])

    def _compute_lr_points(self) -> Tuple[List[int], List[float]]:
        """:meth:`lr_points`, computed once in ``__init__``.

        With long cycles, as PySlowFast's ``init_multigrid``
        (``slowfast/utils/multigrid.py``): the change points are ``[0]`` and
        the entries' end epochs, the last one replaced by the middle of the
        fine-tuning entry, ``(ends[-2] + ends[-1]) // 2``; the relative LR
        of entry ``k`` is ``gamma**lr_stage_k * b_k``, and the list becomes
        ``LRS[:-1] + [LRS[-2], LRS[-1]]``. So the fine-tuning entry's first
        half runs at the LR of the entry before it, ``gamma**(n-1) *
        b_last`` (``n`` milestones, ``b_last`` the batch multiplier of the
        last long-cycle entry's base shape, 1 when the factors end in
        ``(1, 1)``), and its second half at ``gamma**n * b_last``.
        Short cycles only: the stretched stock steps.
        """
        if not self.long_cycle:
            points = [0] + self.milestones
            return points, [self.gamma**i for i in range(len(points))]
        ends = [s.end_epoch for s in self.stages]
        points = [0] + ends[:-1] + [(ends[-2] + ends[-1]) // 2]
        rel = [self.gamma**s.lr_stage * s.shape.batch for s in self.stages]
        return points, rel[:-1] + [rel[-2], rel[-1]]

    def _step_factor(self, epoch: float) -> float:
        """Relative LR of the step schedule at ``epoch``, no warm-up."""
        points, rel = self._lr_points
        return rel[bisect.bisect_right(points, epoch) - 1]

    def _compute_lr_spans(self) -> Optional[List[lr_rules.Span]]:
        """Multigrid and stock epoch spans of each long-cycle phase and of
        the fine-tuning (``lr_rules.equivalent_epoch``); None unless a
        non-step schedule runs with long cycles."""
        if self.step_rule or not self.long_cycle:
            return None
        steps = [0.0] + list(
            self.stock_milestones) + [float(self.stock_max_epochs)]
        spans, begin = [], 0
        for i, stage in enumerate(self.stages):
            last = (
                i + 1 == len(self.stages)
                or self.stages[i + 1].lr_stage != stage.lr_stage)
            if last and stage.end_epoch > begin:
                spans.append((begin, stage.end_epoch, steps[stage.lr_stage],
                              steps[stage.lr_stage + 1]))
            if last:
                begin = stage.end_epoch
        return spans

    def equivalent_stock_epoch(self, epoch: float) -> float:
        """Stock epoch whose LR a multigrid ``epoch`` follows (non-step
        schedules).

        Args:
            epoch: Fractional multigrid epoch.

        Returns:
            float: ``epoch / epoch_factor`` with short cycles only; with
            long cycles, each phase's multigrid epochs mapped linearly onto
            its stock epochs.
        """
        if self._lr_spans is None:
            return epoch / self.epoch_factor
        return lr_rules.equivalent_epoch(epoch, self._lr_spans)

    def stock_lr_factor(self, epoch: float) -> float:
        """LR of the stock step schedule at its own fractional ``epoch``,
        relative to the base LR (warm-up included)."""
        factor = self.gamma**sum(m <= epoch for m in self.stock_milestones)
        if epoch < self.warmup_epochs:
            start = self.warmup_start_factor
            factor *= start + (1 - start) * epoch / self.warmup_epochs
        return factor

    def lr_scale(self, epoch: float) -> float:
        """Factor that ``lr_scaling`` gives the batch multiplier of the base
        shape of ``epoch``."""
        batch = self.base_shape(int(epoch)).batch
        return lr_rules.LR_SCALINGS[self.lr_scaling](batch)

    def lr_factor(self, epoch: float) -> float:
        """LR of the reference step rule at fractional ``epoch`` relative
        to the stock base LR (step schedules; the plan reads any other
        schedule from MMEngine's schedulers).

        Args:
            epoch: ``epoch + iter / iters_in_epoch``.

        Returns:
            float: multiply the base LR by this.
        """
        if epoch < self.warmup_epochs:
            start = self.warmup_start_factor
            end = self.step_factor(self.warmup_epochs)
            return start + epoch * (end - start) / self.warmup_epochs
        return self.step_factor(epoch)

    def batch_lr_factor(self, epoch: int, index: int) -> float:
        """Factor of the LR of batch ``index`` of ``epoch`` on top of
        :meth:`lr_factor`.

        Args:
            epoch: 0-based epoch.
            index: 0-based iteration within the epoch.

        Returns:
            float: 1 with ``short_cycle_lr='constant'``; with ``'scaled'``,
            ``lr_scaling`` applied to the batch's size divided by the base
            shape's batch size (the short cycle's ``k``).
        """
        if self.short_cycle_lr == 'constant':
            return 1.0
        shapes = self.batch_shapes(epoch)
        ratio = shapes[index % len(shapes)].batch_size / shapes[-1].batch_size
        return lr_rules.LR_SCALINGS[self.lr_scaling](ratio)

    def step_factor(self, epoch: float) -> float:
        """Relative LR of the step rule at ``epoch`` without the warm-up,
        with ``lr_scaling`` applied."""
        factor = self._step_factor(epoch)
        if self.lr_scaling != 'linear' and self.long_cycle:
            # The step rule's relative LRs hold the linear batch factor.
            factor *= self.lr_scale(epoch) / self.base_shape(int(epoch)).batch
        return factor

    def epoch_compute(self, epoch: int) -> float:
        """Compute of ``epoch`` relative to a stock epoch.

        Per-clip cost is taken as proportional to ``frames*height*width``;
        every epoch sees every sample once, and the short cycle's batches
        come in equal numbers of iterations.

        Args:
            epoch: 0-based multigrid epoch.

        Returns:
            float: The epoch's compute / a stock epoch's.
        """
        default = self.clip_len * self.size[0] * self.size[1]
        shapes = self.batch_shapes(epoch)
        clips = sum(s.batch_size for s in shapes)
        voxels = sum(s.batch_size * s.clip_len * s.size[0] * s.size[1]
                     for s in shapes)
        return voxels / clips / default

    def compute_ratio(self) -> float:
        """Compute of the multigrid run relative to the stock run.

        Returns:
            float: multigrid compute / stock compute (see
            :meth:`epoch_compute`).
        """
        return sum(self.epoch_compute(e)
                   for e in range(self.max_epochs)) / self.stock_max_epochs

    def iteration_ratio(self) -> float:
        """Stock iterations divided by multigrid iterations (same data)."""
        iters = 0.0
        for epoch in range(self.max_epochs):
            shapes = self.batch_shapes(epoch)
            mean = sum(s.batch_size for s in shapes) / len(shapes)
            iters += self.batch_size / mean
        return self.stock_max_epochs / iters

    def describe(self) -> List[dict]:
        """One row per stage, for tables and logs.

        Returns:
            list[dict]: ``stage, lr_stage, begin, end, frames, interval,
            sizes, batch`` (the short-cycle batch sizes).
        """
        rows, begin = [], 0
        for i, stage in enumerate(self.stages):
            shapes = self.batch_shapes(begin)
            rows.append(
                dict(
                    stage=i,
                    lr_stage=stage.lr_stage,
                    begin=begin,
                    end=stage.end_epoch,
                    frames=shapes[-1].clip_len,
                    interval=shapes[-1].frame_interval,
                    sizes=[s.size for s in shapes],
                    batch=[s.batch_size for s in shapes]))
            begin = stage.end_epoch
        return rows
