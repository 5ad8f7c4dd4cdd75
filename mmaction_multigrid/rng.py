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
import random
from typing import Iterator, Optional

import numpy as np
import torch


def rng_state() -> dict:
    """Python, NumPy and torch CPU random states of this process."""
    return dict(python=random.getstate(), numpy=np.random.get_state(),
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

    The three numbers go through NumPy's ``SeedSequence``, so neighbouring
    epochs or positions give unrelated streams.

    Args:
        base: The run's sampler seed (any int; taken modulo 2**64).
        epoch: 0-based epoch.
        position: Position of the sample in the epoch's global order.

    Returns:
        int: A seed in ``[0, 2**32)``, valid for all three generators.
    """
    entropy = (base % 2**64, epoch, position)
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


@contextlib.contextmanager
def seeded(seed: Optional[int]) -> Iterator[None]:
    """Run the block with Python, NumPy and torch CPU generators seeded
    ``seed``, then put back the states found.

    Putting them back keeps a sample loaded in the training process
    (``num_workers=0``) from moving the streams that dropout and the other
    training-time draws use; in a worker it is harmless.

    Args:
        seed: The seed; None runs the block on the current streams.
    """
    if seed is None:
        yield
        return
    with preserved_rng():
        random.seed(seed)
        np.random.seed(seed)
        # The CPU generator only: torch.manual_seed would also reseed the
        # CUDA generators that training draws from.
        torch.default_generator.manual_seed(seed)
        yield
