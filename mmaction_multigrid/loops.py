"""MultiGridTrainLoop: the epoch loop, with data prefetched across epochs.

Multigrid epochs can be short: the first long-cycle stage loads up to 16x
the stock clips per iteration, so a small data set makes epochs of a few
iterations. MMEngine's ``EpochBasedTrainLoop`` restarts the data loader's
iterator every epoch; with persistent workers that drops the prefetched
batches, and the model then waits while one worker builds the whole first
batch of the epoch. Measured on the demo benchmark (rawframes, 6-iteration
stage-0 epochs): 4.9 s of the 12.5 s of data wait of a 71.7 s run.
"""
from mmengine.runner import EpochBasedTrainLoop

from .samplers import ShortCycleBatchSampler
from .seeding import own_base_seed


class MultiGridTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that keeps one loader iterator for all epochs.

    When the train loader has worker processes with
    ``persistent_workers=True`` and a
    :class:`~mmaction_multigrid.samplers.ShortCycleBatchSampler`, the loop
    creates a single iterator at its first epoch; the batch sampler yields
    the remaining epochs back to back (each in the order its sampler gives
    for that epoch), and every epoch takes exactly its own number of
    batches. Batches, shapes and order are those of the stock loop; the
    workers simply start on the next epoch while the current one ends and
    while validation runs. Otherwise (no workers, or workers restarted every
    epoch, which also restarts their random state) it is the stock loop.
    Either way the loader draws its workers' base seed from a generator of
    its own (:func:`~mmaction_multigrid.seeding.own_base_seed`), not from
    the training process's streams. ``MultiGridRunner`` builds it in place
    of ``EpochBasedTrainLoop``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._batches = None
        seed = getattr(getattr(self.dataloader.batch_sampler, 'sampler',
                               None), 'seed', None)
        own_base_seed(self.dataloader,
                      self.runner.seed if seed is None else seed)

    def _prefetches_across_epochs(self) -> bool:
        loader = self.dataloader
        return (isinstance(loader.batch_sampler, ShortCycleBatchSampler)
                and loader.num_workers > 0 and loader.persistent_workers)

    def run_epoch(self) -> None:
        """Iterate one epoch (its batches may be prefetched already)."""
        if not self._prefetches_across_epochs():
            super().run_epoch()
            return
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        if self._batches is None:
            self.dataloader.batch_sampler.continue_until(self._max_epochs)
            self._batches = iter(self.dataloader)
            self.runner.logger.info(
                'Multigrid: the train loader prefetches across epochs '
                '(persistent workers).')
        for idx in range(len(self.dataloader)):
            self.run_iter(idx, next(self._batches))
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
