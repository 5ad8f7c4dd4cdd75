"""MultiGridTrainLoop: the epoch loop of a multigrid run.

Multigrid epochs differ in length (the batch size follows the long-cycle
shape): the loop completes the run's plan with the sample count, which gives
the epoch lengths, and runs epochs of those lengths.

It also keeps one loader iterator across epochs when the workers persist:
multigrid epochs can be a few iterations long (the first long-cycle stage
loads up to 16x the stock clips per iteration), and restarting the iterator
every epoch drops the prefetched batches, so the model waits while one
worker builds the epoch's whole first batch.
"""
from typing import List

from mmengine.runner import EpochBasedTrainLoop

from ..datasets.collate import join_batches
from ..datasets.rng import preserved_rng
from ..schedule.plan import MultiGridPlan


class MultiGridTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` for a multigrid schedule.

    - Epoch ``e`` has ``plan.epoch_lengths[e]`` iterations; the sampler is
      told the epoch before it is iterated.
      ``max_iters`` is the sum of the epoch lengths (plus the offset of a
      resumed run, whose checkpoint may come from another number of GPUs or
      from a stock run).
    - Creating a loader iterator leaves the training random stream alone,
      so dropout draws the same numbers with 0 or N workers.
    - With worker processes and ``persistent_workers=True`` a single loader
      iterator serves all epochs: the batch sampler yields the epochs back to
      back (each in the order its sampler gives for that epoch) and every
      epoch takes exactly its own batches. Batches, shapes and order are
      those of the stock loop; the workers start on the next epoch while the
      current one ends and while validation runs.

    ``MultiGridRunner`` builds it in place of ``EpochBasedTrainLoop`` (the
    config keeps ``EpochBasedTrainLoop``), with a train dataloader whose
    batch sampler is a
    :class:`~mmaction_multigrid.datasets.sampler.ShortCycleBatchSampler`.

    Args:
        *args: Those of ``EpochBasedTrainLoop``.
        plan (MultiGridPlan): The run's plan, with epoch lengths.
        **kwargs: Those of ``EpochBasedTrainLoop``.
    """

    def __init__(self, *args, plan: MultiGridPlan, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.plan = plan
        if self._max_epochs != self.plan.schedule.max_epochs:
            raise ValueError(
                f'train_cfg.max_epochs={self._max_epochs} but the multigrid '
                f'schedule has {self.plan.schedule.max_epochs} epochs; let '
                'the conversion set max_epochs.')
        self._check_epochs()
        self._offset = None
        self._batches = None

    @property
    def epoch_lengths(self) -> List[int]:
        """Iterations of each epoch, the plan's."""
        return list(self.plan.epoch_lengths)

    def _check_epochs(self) -> None:
        """Raise if an epoch has no full batch."""
        empty = [e for e, n in enumerate(self.epoch_lengths) if n == 0]
        if empty:
            biggest = max(
                s.batch_size
                for s in self.plan.schedule.batch_shapes(empty[0]))
            raise ValueError(
                f'multi_grid: epoch {empty[0]} has no full batch: '
                f'{len(self.dataloader.batch_sampler.sampler)} samples per '
                f'GPU but batches of up to {biggest} clips. Use a smaller '
                'train_dataloader.batch_size, more data, or '
                'train_dataloader.drop_last=False.')

    @property
    def iter_offset(self) -> int:
        """Global iteration at which epoch 0 would have started.

        0 for a fresh run and for a resume of the same run; otherwise the
        difference between the resumed checkpoint's iteration and this
        schedule's iterations before its epoch.
        """
        if self._offset is not None:
            return self._offset
        # Before run(): the loop stands at an epoch boundary (fresh or just
        # resumed), where this is exact.
        return self._iter - self.plan.steps_before(self._epoch)

    @property
    def max_iters(self) -> int:
        """Total iterations of the run: the epoch lengths summed."""
        return self.iter_offset + self.plan.steps_before(self._max_epochs)

    def run(self):
        """Train; fixes :attr:`iter_offset` for the run."""
        self._offset = self.iter_offset
        return super().run()

    def _prefetches_across_epochs(self) -> bool:
        loader = self.dataloader
        return loader.num_workers > 0 and loader.persistent_workers

    def _start_batches(self) -> None:
        """Create the loader iterator for this epoch, or for all the epochs
        left when the workers persist."""
        persistent = self._prefetches_across_epochs()
        if persistent:
            self.dataloader.batch_sampler.continue_until(self._max_epochs)
        # A new iterator draws its workers' base seed from torch's
        # generator: keep that draw out of the training random stream.
        with preserved_rng():
            self._batches = iter(self.dataloader)
        if persistent:
            self.runner.logger.info(
                'Multigrid: the train loader prefetches across epochs '
                '(persistent workers).')

    def run_epoch(self) -> None:
        """Iterate one epoch (its batches may be prefetched already)."""
        self.dataloader.batch_sampler.set_epoch(self._epoch)
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        if self._batches is None:
            self._start_batches()
        counts = self.dataloader.batch_sampler.chunk_counts(self._epoch)
        for idx in range(self.plan.epoch_lengths[self._epoch]):
            self.run_iter(
                idx,
                join_batches([next(self._batches)
                              for _ in range(counts[idx])]))
        if not self._prefetches_across_epochs():
            self._batches = None
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
