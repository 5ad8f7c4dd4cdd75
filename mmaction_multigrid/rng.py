"""The random state of a process: Python's, NumPy's and torch's CPU
generator, saved, restored and kept out of side work.

Training randomness that lives in the training process (dropout, for one)
must not depend on the data path: with ``num_workers=0`` the pipeline runs
in the training process, and every new data loader iterator draws its
workers' base seed from torch's generator. Side work runs inside
:func:`preserved_rng`, so a run draws the same training random numbers
with 0 or N workers, persistent or not, and after a resume.
"""
import contextlib
import random
from typing import Iterator

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
