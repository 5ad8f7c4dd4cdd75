"""Per-sample random streams: a sample's augmentations depend on the run
seed, the epoch and its position in the epoch, not on which process loads it.

A DataLoader worker draws augmentation random numbers from its own streams,
seeded once when the worker starts. Which worker loads which sample, and how
far its streams have advanced, then decide a sample's crop, flip and frame
offsets: a run with 2 workers differs from one with 0, and a resumed run
(whose workers restart from their seeds) differs from the uninterrupted one.
Seeding Python's ``random``, NumPy's global generator and torch's CPU
generator from ``(seed, epoch, position)`` before each sample removes both
dependencies.

The training process's streams (dropout, ...) must not depend on the loader
either: :func:`own_base_seed` keeps a DataLoader from drawing its workers'
base seed from them.
"""
import contextlib
import hashlib
import random
import struct
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info


def sample_seed(base: int, epoch: int, position: int) -> int:
    """Seed of the sample at ``position`` of ``epoch`` in a run seeded
    ``base``.

    The three numbers go through a hash (BLAKE2b), so neighbouring epochs or
    positions give unrelated streams; a few microseconds per sample, in the
    process that iterates the batch sampler.

    Args:
        base: The run's sampler seed (any int; taken modulo 2**64).
        epoch: 0-based epoch.
        position: Position of the sample in the epoch's global order.

    Returns:
        int: A seed in ``[0, 2**32)``, valid for all three generators.
    """
    key = struct.pack('<3Q', base % 2**64, epoch, position)
    return int.from_bytes(
        hashlib.blake2b(key, digest_size=4).digest(), 'little')


@contextlib.contextmanager
def seeded(seed: Optional[int]) -> Iterator[None]:
    """Run the block with Python, NumPy and torch CPU generators seeded
    ``seed``.

    In the training process (``num_workers=0``) the states found are put
    back afterwards, so that loading a sample does not move the streams that
    dropout and the other training-time draws use. A DataLoader worker's
    streams serve only its samples: they are left as the block leaves them
    (saving and restoring NumPy's state would cost more than the seeding).

    Args:
        seed: The seed; None runs the block on the current streams.
    """
    if seed is None:
        yield
        return
    states = None
    if get_worker_info() is None:
        states = (random.getstate(), np.random.get_state(),
                  torch.get_rng_state())
    random.seed(seed)
    np.random.seed(seed)
    # The CPU generator only: torch.manual_seed would also reseed the CUDA
    # generators that training draws from.
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if states is not None:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


def own_base_seed(loader: DataLoader, seed: int) -> None:
    """Give ``loader`` a generator of its own, seeded ``seed``, unless it
    has one.

    Every ``iter(loader)`` draws the workers' base seed from
    ``loader.generator``, by default from torch's global generator, which
    dropout and the other training-time draws share. The stock epoch loop
    makes one iterator per epoch, a persistent-worker loader keeps one for
    the run, a resumed run makes a new one: without a generator of its own,
    each would leave the training streams at another point, and the weights
    would depend on the number of workers and on a resume. The base seed
    itself matters to no sample that carries a seed.

    Args:
        loader: The train DataLoader, before its first iteration.
        seed: Seed of its generator (the run's sampler seed).
    """
    if loader.generator is None:
        loader.generator = torch.Generator().manual_seed(seed % 2**64)
