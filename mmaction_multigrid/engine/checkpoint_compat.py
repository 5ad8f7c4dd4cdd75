"""Let ``torch.load``'s weights-only check accept MMEngine's own checkpoints.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``: it
unpickles only tensors, builtin containers and the globals on an allowlist.
MMEngine 0.10.7 loads checkpoints with that default, but its checkpoints
hold more (checked with torch 2.13 and MMEngine 0.10.7, NumPy 1.26):

- ``message_hub``: one ``mmengine.logging.HistoryBuffer`` per logged scalar,
  holding NumPy ``float64`` and ``int64`` arrays (values and counts) and,
  through ``HistoryBuffer``'s ``__getstate__``, its statistics methods,
  pickled as ``getattr(HistoryBuffer, 'min')`` and so on; ``runtime_info``
  holds NumPy scalars (the ETA);
- this plugin's ``'multi_grid'`` entry: NumPy's random state (a ``uint32``
  array).

So ``tools/train.py --resume`` and ``tools/test.py CKPT`` fail with "Weights
only load failed ... HistoryBuffer was not an allowed global". The usual
workaround, ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, switches the check off
for every file. :func:`allow_mmengine_checkpoints` instead adds exactly these
globals to torch's allowlist; ``getattr`` is allowed only as
``getattr(HistoryBuffer, <statistic>)``. Everything else is refused as
before. The package calls it on import (``custom_imports`` of a multigrid
config), so the allowlist grows only in processes that load the plugin.
"""
from typing import Callable

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

# The methods HistoryBuffer registers for itself (_set_default_statistics).
HISTORY_BUFFER_STATISTICS = ('current', 'max', 'mean', 'min')


def history_buffer_statistic(owner: type, name: str) -> Callable:
    """``getattr`` for unpickling, limited to ``HistoryBuffer`` statistics.

    Args:
        owner: The object whose attribute the pickle asks for.
        name: The attribute.

    Returns:
        Callable: ``getattr(HistoryBuffer, name)``.

    Raises:
        pickle.UnpicklingError: for any other object or attribute.
    """
    if owner is not HistoryBuffer or name not in HISTORY_BUFFER_STATISTICS:
        raise torch.serialization.pickle.UnpicklingError(
            f'getattr({owner!r}, {name!r}) is not allowed in a weights-only '
            'load: only HistoryBuffer statistics methods are.')
    return getattr(HistoryBuffer, name)


def mmengine_checkpoint_globals() -> list:
    """The globals an MMEngine 0.10.7 checkpoint holds beyond torch's own
    allowlist, in the form ``torch.serialization.add_safe_globals`` takes.
    """
    # The functions NumPy pickles arrays and scalars with, taken from NumPy
    # itself (np.core became np._core in NumPy 2).
    rebuild_array = np.ndarray((0, )).__reduce__()[0]
    rebuild_scalar = np.float64(0).__reduce__()[0]
    return [
        HistoryBuffer,
        (history_buffer_statistic, 'builtins.getattr'),
        rebuild_array,
        rebuild_scalar,
        np.ndarray,
        np.dtype,
        type(np.dtype(np.float64)),
        type(np.dtype(np.int64)),
        type(np.dtype(np.uint32)),
    ]


def allow_mmengine_checkpoints() -> None:
    """Add :func:`mmengine_checkpoint_globals` to torch's weights-only
    allowlist (idempotent: the allowlist is a set)."""
    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
