"""MultiGridTrainLoop: the epoch loop of a multigrid run.

Multigrid epochs differ in length (the batch size follows the long-cycle
shape), so the loop owns the epoch lengths, ``max_iters`` and the mapping
from a global iteration to a fractional epoch that the LR schedule reads.

It also keeps one loader iterator across epochs when the workers persist:
multigrid epochs can be a few iterations long (the first long-cycle stage
loads up to 16x the stock clips per iteration), and restarting the iterator
every epoch drops the prefetched batches, so the model waits while one
worker builds the epoch's whole first batch.
"""
from typing import List, Tuple

from mmengine.runner import EpochBasedTrainLoop

from ..datasets.collate import join_batches
from ..datasets.rng import preserved_rng
from ..datasets.sampler import ShortCycleBatchSampler
from ..schedule.cycles import MultiGridSchedule
from .lr import MultiGridLR, epoch_position, fractional_epoch


class MultiGridTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` for a multigrid schedule.

    - Epoch ``e`` has ``schedule.num_batches(e, ...)`` iterations; the
      sampler is told the epoch before it is iterated. ``max_iters`` is the
      sum of the epoch lengths (plus the offset of a resumed run, whose
      checkpoint may come from another number of GPUs or from a stock run).
    - :meth:`fractional_epoch` maps a global iteration to
      ``epoch + iter / iters_in_epoch`` and :meth:`epoch_position` to
      ``(epoch, iter)``; ``MultiGridRunner`` hands both to
      :class:`~mmaction_multigrid.engine.lr.MultiGridLR` when building it.
    - Creating a loader iterator leaves the training random stream alone,
      so dropout draws the same numbers with 0 or N workers.
    - With worker processes and ``persistent_workers=True`` a single loader
      iterator serves all epochs: the batch sampler yields the epochs back to
      back (each in the order its sampler gives for that epoch) and every
      epoch takes exactly its own batches. Batches, shapes and order are
      those of the stock loop; the workers start on the next epoch while the
      current one ends and while validation runs.

    ``MultiGridRunner`` builds it in place of ``EpochBasedTrainLoop`` (the
    config keeps ``EpochBasedTrainLoop``). Arguments are those of
    ``EpochBasedTrainLoop``; the train dataloader must use a
    :class:`~mmaction_multigrid.datasets.sampler.ShortCycleBatchSampler`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        sampler = self.dataloader.batch_sampler
        if not isinstance(sampler, ShortCycleBatchSampler):
            raise TypeError(
                'MultiGridTrainLoop needs train_dataloader.batch_sampler='
                'ShortCycleBatchSampler; a config with `multi_grid` gets it '
                'from the conversion (mmaction_multigrid.convert_config).')
        self.schedule: MultiGridSchedule = sampler.schedule
        if self._max_epochs != self.schedule.max_epochs:
            raise ValueError(
                f'train_cfg.max_epochs={self._max_epochs} but the multigrid '
                f'schedule has {self.schedule.max_epochs} epochs; let the '
                'conversion set max_epochs.')
        self.epoch_lengths: List[int] = [
            sampler.num_batches(e) for e in range(self._max_epochs)
        ]
        self._check_epochs()
        self._offset = None
        self._batches = None

    def _check_epochs(self) -> None:
        """Raise if an epoch has no full batch."""
        empty = [e for e, n in enumerate(self.epoch_lengths) if n == 0]
        if empty:
            biggest = max(
                s.batch_size for s in self.schedule.batch_shapes(empty[0]))
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
        return self._iter - sum(self.epoch_lengths[:self._epoch])

    @property
    def max_iters(self) -> int:
        """Total iterations of the run: the epoch lengths summed."""
        return self.iter_offset + sum(self.epoch_lengths)

    def fractional_epoch(self, step: int) -> float:
        """Fractional epoch ``epoch + iter / iters_in_epoch`` of ``step``.

        Args:
            step: Global iteration (``runner.iter``).

        Returns:
            float: The fractional epoch.
        """
        return fractional_epoch(step - self.iter_offset, self.epoch_lengths)

    def epoch_position(self, step: int) -> Tuple[int, int]:
        """Epoch of ``step`` and the step's iteration within it.

        Args:
            step: Global iteration (``runner.iter``).

        Returns:
            tuple[int, int]: ``(epoch, iter)``.
        """
        return epoch_position(step - self.iter_offset, self.epoch_lengths)

    def run(self):
        """Train; resumed runs continue the LR at the resumed iteration."""
        self._offset = self.iter_offset
        for scheduler in self._multigrid_schedulers():
            scheduler.start_at(self._iter)
        return super().run()

    def _multigrid_schedulers(self) -> List[MultiGridLR]:
        schedulers = self.runner.param_schedulers or []
        if isinstance(schedulers, dict):
            schedulers = [s for group in schedulers.values() for s in group]
        return [s for s in schedulers if isinstance(s, MultiGridLR)]

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
        for idx in range(self.epoch_lengths[self._epoch]):
            self.run_iter(
                idx,
                join_batches([next(self._batches)
                              for _ in range(counts[idx])]))
        if not self._prefetches_across_epochs():
            self._batches = None
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
