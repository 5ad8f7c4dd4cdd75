"""ShortCycleBatchSampler: per-GPU batches whose size and shape follow the
multigrid schedule, iteration by iteration."""
from typing import Callable, Iterator, List, Optional

from mmaction.registry import DATA_SAMPLERS
from torch.utils.data import BatchSampler, Sampler

from ..schedule.plan import MultiGridPlan
from .rng import sample_seed
from .wrapper import ShapedIndex


@DATA_SAMPLERS.register_module()
class ShortCycleBatchSampler(BatchSampler):
    """Batch sampler for multigrid training.

    Within an epoch it cycles through the short-cycle batch sizes of the
    epoch's long-cycle shape (one size when short cycles are off), restarting
    the cycle every epoch. Every index of a batch is a
    :class:`~mmaction_multigrid.datasets.wrapper.ShapedIndex` carrying the
    clip shape of that batch and, when ``sampler`` has a ``seed`` (MMEngine's
    ``DefaultSampler``: the run seed, kept in checkpoints), the seed of the
    sample's augmentations, from that seed, the epoch and the sample's
    position in the epoch (see :mod:`~mmaction_multigrid.datasets.rng`).

    With ``drop_last`` an epoch has ``floor(n / mean(batch sizes))`` batches
    (the reference count); when the samples run out before that, the last
    batches are completed from the start of the epoch's order, so every batch
    is full and every rank yields the same number of batches.

    After :meth:`continue_until`, one iteration runs on through the following
    epochs, each with the order its ``sampler`` gives for that epoch, so a
    data loader can prefetch across epoch boundaries
    (:class:`~mmaction_multigrid.engine.loop.MultiGridTrainLoop`).

    With ``chunk_size``, each batch is yielded as consecutive chunks of at
    most that many indices (:meth:`chunk_counts` says how many per batch),
    which a data loader hands to different workers; the train loop joins
    them again. A batch of up to 16x the stock clips then loads in about
    the time of a stock batch instead of 16x that, by one worker: the first
    batch of a run waits on it.

    Args:
        sampler (Sampler): The per-rank sampler (e.g. ``DefaultSampler``).
        batch_size (int): The stock per-GPU batch size.
        drop_last (bool): Whether to drop the incomplete last batch.
            Defaults to True.
        plan (MultiGridPlan): The run's plan (``MultiGridRunner`` passes
            it); its schedule gives the shapes.
        chunk_size (int, optional): Indices per yielded chunk; None yields
            whole batches. Defaults to None.
    """

    def __init__(self,
                 sampler: Sampler,
                 batch_size: int,
                 drop_last: bool = True,
                 plan: Optional[MultiGridPlan] = None,
                 chunk_size: Optional[int] = None) -> None:
        if plan is None:
            raise ValueError('ShortCycleBatchSampler needs `plan`; '
                             'MultiGridRunner passes it when it builds the '
                             'train dataloader of a config with '
                             '`multi_grid`.')
        if batch_size != plan.schedule.batch_size:
            raise ValueError(
                f'ShortCycleBatchSampler: batch_size={batch_size} but the '
                f'plan was made for batches of {plan.schedule.batch_size}.')
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.plan = plan
        self.schedule = plan.schedule
        self.chunk_size = chunk_size
        self.epoch = 0
        self.end_epoch: Optional[int] = None

    def set_epoch(self, epoch: int) -> None:
        """Select the long-cycle shape of ``epoch`` (0-based)."""
        self.epoch = epoch

    def continue_until(self, end_epoch: Optional[int]) -> None:
        """Let one iteration yield the batches of epochs ``self.epoch`` to
        ``end_epoch - 1`` back to back (None: one epoch, the default)."""
        self.end_epoch = end_epoch

    def num_batches(self, epoch: int) -> int:
        """Number of batches of ``epoch``."""
        return self.schedule.num_batches(epoch, len(self.sampler),
                                         self.drop_last)

    def chunk_counts(self, epoch: int) -> List[int]:
        """Number of chunks of each batch of ``epoch``."""
        shapes = self.schedule.batch_shapes(epoch)
        samples = len(self.sampler)
        step = self.chunk_size
        counts, start = [], 0
        for k in range(self.num_batches(epoch)):
            size = shapes[k % len(shapes)].batch_size
            if not self.drop_last:
                size = min(start + size, samples) - start
            start += size
            counts.append(-(-size // step) if step else 1)
        return counts

    def __len__(self) -> int:
        return self.num_batches(self.epoch)

    def __iter__(self) -> Iterator[List[ShapedIndex]]:
        if self.end_epoch is None:
            yield from self._epoch_batches(self.epoch)
            return
        for epoch in range(self.epoch, self.end_epoch):
            if hasattr(self.sampler, 'set_epoch'):
                self.sampler.set_epoch(epoch)
            yield from self._epoch_batches(epoch)

    def _epoch_batches(self, epoch: int) -> Iterator[List[ShapedIndex]]:
        """The batches of ``epoch``, in the sampler's current order."""
        shapes = self.schedule.batch_shapes(epoch)
        order = list(self.sampler)
        seed = self._seeds(epoch)
        start = 0
        for k in range(self.num_batches(epoch)):
            shape = shapes[k % len(shapes)]
            stop = start + shape.batch_size
            if self.drop_last:
                chunk = [order[i % len(order)] for i in range(start, stop)]
            else:
                chunk = order[start:stop]
            batch = [
                ShapedIndex(i,
                            shape.clip_len, shape.frame_interval, *shape.size,
                            seed(start + k)) for k, i in enumerate(chunk)
            ]
            step = self.chunk_size or len(batch)
            for first in range(0, len(batch), step):
                yield batch[first:first + step]
            start = stop

    def _seeds(self, epoch: int) -> Callable[[int], Optional[int]]:
        """Position in this rank's epoch -> sample seed (None without a
        sampler seed).

        The position is taken in the epoch's global order: the ``k``-th
        sample of rank ``r`` of ``w`` is sample ``k * w + r``, as
        ``DefaultSampler`` deals them out, so ranks never share a seed.
        """
        base = getattr(self.sampler, 'seed', None)
        if base is None:
            return lambda position: None
        rank = getattr(self.sampler, 'rank', 0)
        world = getattr(self.sampler, 'world_size', 1)
        return lambda position: sample_seed(base, epoch, position * world +
                                            rank)
