"""Random streams: per-sample seeds for augmentation, and the training
process's own streams kept apart from the data path.

A DataLoader worker draws augmentation random numbers from its own streams,
seeded once when the worker starts. Which worker loads which sample, and how
far its streams have advanced, would then decide a sample's crop, flip and
frame offsets: a run with 2 workers would differ from one with 0, and a
resumed run (whose workers restart from their seeds) from the uninterrupted
one. Seeding Python's ``random``, NumPy's global generator and torch's CPU
generator from ``(seed, epoch, position)`` before each sample removes both
dependencies (:func:`sample_seed`, :func:`seeded`).

Training randomness that lives in the training process (dropout, for one)
must not depend on the data path either: with ``num_workers=0`` the pipeline
runs in the training process, and every new data loader iterator draws its
workers' base seed from torch's generator. Such side work runs inside
:func:`preserved_rng`.
"""
import contextlib
import hashlib
import random
import struct
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import get_worker_info


def rng_state() -> dict:
    """Python, NumPy and torch CPU random states of this process."""
    return dict(
        python=random.getstate(),
        numpy=np.random.get_state(),
        torch=torch.get_rng_state())


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block, then put the random states back as they were."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


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


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    # The CPU generator only: torch.manual_seed would also reseed the CUDA
    # generators that training draws from.
    torch.default_generator.manual_seed(seed)


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
    elif get_worker_info() is None:
        with preserved_rng():
            _seed_all(seed)
            yield
    else:
        _seed_all(seed)
        yield
