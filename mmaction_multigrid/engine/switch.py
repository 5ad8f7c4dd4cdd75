"""The import-time switch that routes configs with ``multi_grid`` to
:class:`~mmaction_multigrid.engine.runner.MultiGridRunner`.

``tools/train.py`` of MMAction2 builds its Runner with ``Runner.from_cfg``;
other tools build ``runner_type`` with ``RUNNERS.build``, which calls that
class's ``from_cfg``. Importing this package (``custom_imports``) wraps
``Runner.from_cfg`` once: a config with ``multi_grid`` is built by
``MultiGridRunner``, which converts it first, or, for a user's Runner
subclass, by that subclass with ``MultiGridRunner`` mixed in (see
:func:`multigrid_runner_class`); any other config goes through the stock
code unchanged.
"""
from typing import Dict

from mmengine.runner import FlexibleRunner, Runner

from .runner import STOCK_FROM_CFG, MultiGridRunner

_STOCK_FLEXIBLE_FROM_CFG = FlexibleRunner.from_cfg.__func__

# User Runner subclass -> that subclass with MultiGridRunner mixed in.
_COMPOSED: Dict[type, type] = {}


def multigrid_runner_class(cls: type) -> type:
    """The Runner class that trains a ``multi_grid`` config for ``cls``.

    ``MultiGridRunner`` for ``Runner``; for a user's subclass ``UserRunner``,
    ``MultiGridUserRunner(MultiGridRunner, UserRunner)`` (made once, then
    cached): its method order is ``MultiGridRunner``, ``UserRunner``,
    ``Runner``, so the multigrid methods run first and hand over to the
    user's own through ``super()``, and every other method is the user's.

    Args:
        cls: The class whose ``from_cfg`` was called.

    Returns:
        type: A subclass of both ``cls`` and :class:`MultiGridRunner`.
    """
    if cls is Runner:
        return MultiGridRunner
    if issubclass(cls, MultiGridRunner):
        return cls
    if cls not in _COMPOSED:
        _COMPOSED[cls] = type(
            f'MultiGrid{cls.__name__}', (MultiGridRunner, cls), {
                '__module__': cls.__module__,
                '__doc__': f'{cls.__name__} trained the multigrid way.'
            })
    return _COMPOSED[cls]


def _from_cfg(cls, cfg) -> Runner:
    """``Runner.from_cfg`` that builds configs with ``multi_grid`` with
    :func:`multigrid_runner_class` of ``cls``."""
    if cfg.get('multi_grid') is not None:
        return multigrid_runner_class(cls).from_cfg(cfg)
    return STOCK_FROM_CFG(cls, cfg)


def _flexible_from_cfg(cls, cfg) -> FlexibleRunner:
    """``FlexibleRunner.from_cfg`` that refuses configs with
    ``multi_grid``."""
    if cfg.get('multi_grid') is not None:
        raise ValueError(
            f'multi_grid: runner_type={cls.__name__} is not supported (it is '
            'no Runner subclass, so the multigrid Runner cannot be mixed '
            'in). Use runner_type="Runner" or a Runner subclass, or remove '
            '`multi_grid`.')
    return _STOCK_FLEXIBLE_FROM_CFG(cls, cfg)


def install_switch() -> None:
    """Route ``Runner.from_cfg`` of ``multi_grid`` configs to
    :func:`multigrid_runner_class`, and make ``FlexibleRunner.from_cfg``
    refuse them (idempotent)."""
    if Runner.__dict__['from_cfg'].__func__ is not _from_cfg:
        Runner.from_cfg = classmethod(_from_cfg)
    if FlexibleRunner.__dict__['from_cfg'].__func__ is not _flexible_from_cfg:
        FlexibleRunner.from_cfg = classmethod(_flexible_from_cfg)
