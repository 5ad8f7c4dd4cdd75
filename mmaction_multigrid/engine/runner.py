"""MultiGridRunner and the import-time switch that routes configs with
``multi_grid`` to it.

``tools/train.py`` of MMAction2 builds its Runner with ``Runner.from_cfg``;
other tools build ``runner_type`` with ``RUNNERS.build``, which calls that
class's ``from_cfg``. Importing this package (``custom_imports``) wraps
``Runner.from_cfg`` once: a config with ``multi_grid`` is built by
:class:`MultiGridRunner`, which converts it first, or, for a user's Runner
subclass, by that subclass with :class:`MultiGridRunner` mixed in (see
:func:`multigrid_runner_class`); any other config goes through the stock
code unchanged.
"""
from typing import Dict

from mmaction.registry import PARAM_SCHEDULERS
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import RUNNERS
from mmengine.runner import EpochBasedTrainLoop, FlexibleRunner, Runner

from ..models.sub_batch_bn import convert_sub_batch_bn, plain_bn_layers
from .convert import convert_config
from .loop import MultiGridTrainLoop
from .lr import MultiGridLR

_STOCK_FROM_CFG = Runner.from_cfg.__func__
_STOCK_FLEXIBLE_FROM_CFG = FlexibleRunner.from_cfg.__func__


@RUNNERS.register_module()
class MultiGridRunner(Runner):
    """A Runner that trains a config with ``multi_grid`` the multigrid way.

    ``from_cfg`` converts the config (see
    :func:`mmaction_multigrid.convert_config`), so the config dumped into the
    work dir is the converted one. ``build_model`` makes BatchNorm layers
    sub-batch BN when ``multi_grid.bn_base_size`` is set; their checkpoint
    keys stay those of ``nn.BatchNorm3d``. ``build_train_loop`` runs an
    ``EpochBasedTrainLoop`` config as :class:`MultiGridTrainLoop` (the config
    itself is left as it is), and ``build_param_scheduler`` hands that loop's
    schedule and epoch mapping to ``MultiGridLR``. Each method hands over to
    the next class with ``super()``, so the class also serves as a mixin for
    a user's Runner subclass (:func:`multigrid_runner_class`).
    """

    @classmethod
    def from_cfg(cls, cfg) -> 'Runner':
        return _STOCK_FROM_CFG(cls, convert_config(cfg))

    def build_model(self, model):
        model = super().build_model(model)
        base_size = (self.cfg.get('multi_grid') or {}).get('bn_base_size')
        if base_size:
            model = convert_sub_batch_bn(model, base_size)
        return model

    def build_param_scheduler(self, scheduler):
        """Build the schedulers; ``MultiGridLR`` gets the train loop's
        schedule and epoch mapping (one schedule for the whole run).

        ``MultiGridLR`` is built here rather than by MMEngine, which
        deep-copies scheduler configs (MMEngine 0.10.7) and would copy the
        shared schedule and the loop with them.
        """
        configs = scheduler if isinstance(scheduler, list) else [scheduler]
        if any(_is_multigrid_lr(c) for c in configs):
            if isinstance(self.optim_wrapper, OptimWrapperDict):
                raise ValueError(
                    'multi_grid supports one optimizer: optim_wrapper '
                    'builds several (OptimWrapperDict).')
            configs = [
                self._build_multigrid_lr(c) if _is_multigrid_lr(c) else c
                for c in configs
            ]
        return super().build_param_scheduler(configs)

    def _build_multigrid_lr(self, cfg: dict) -> MultiGridLR:
        loop = self.train_loop
        # A config converted by release 0.1 also names the schedule's
        # arguments here; the loop's schedule is the one to share.
        cfg = {k: v for k, v in cfg.items() if k != 'schedule'}
        return PARAM_SCHEDULERS.build(
            cfg,
            default_args=dict(
                optimizer=self.optim_wrapper,
                schedule=loop.schedule,
                epoch_of_step=loop.fractional_epoch,
                position_of_step=loop.epoch_position))

    def wrap_model(self, model_wrapper_cfg, model):
        # MMEngine 0.10.7's wrap_model undoes sub-batch BN: on one process
        # revert_sync_batchnorm turns SubBatchSyncBatchNorm into plain
        # _BatchNormXd; with cfg.sync_bn, convert_sync_batchnorm replaces
        # SubBatchNorm3d by SyncBatchNorm. Convert again after it.
        model = super().wrap_model(model_wrapper_cfg, model)
        base_size = (self.cfg.get('multi_grid') or {}).get('bn_base_size')
        if base_size:
            inner = model.module if is_model_wrapper(model) else model
            convert_sub_batch_bn(inner, base_size)
            self._log_plain_bn(inner)
        return model

    def _log_plain_bn(self, model) -> None:
        """Log every BN layer that computes no sub-batch statistics, with
        the reason, and the per-sample norm layers in one line."""
        plain, per_sample = plain_bn_layers(model)
        for name, reason in plain:
            self.logger.info(f'Multigrid: BN layer {name} left plain: '
                             f'{reason}.')
        if per_sample:
            counts = ', '.join(f'{n} {k}'
                               for k, n in sorted(per_sample.items()))
            self.logger.info(
                f'Multigrid: {counts} layer(s) normalise each sample on '
                'its own; the batch size does not change them.')

    def build_train_loop(self, loop):
        if _is_epoch_loop(loop):
            loop = {k: v for k, v in loop.items() if k != 'by_epoch'}
            loop['type'] = MultiGridTrainLoop
        return super().build_train_loop(loop)


def _is_epoch_loop(cfg) -> bool:
    """Whether ``cfg`` is a stock ``EpochBasedTrainLoop`` config."""
    if not isinstance(cfg, dict):
        return False
    kind = cfg.get('type', 'EpochBasedTrainLoop')
    stock = kind in ('EpochBasedTrainLoop', EpochBasedTrainLoop)
    return stock and cfg.get('by_epoch', True)


def _is_multigrid_lr(cfg) -> bool:
    """Whether ``cfg`` is a ``MultiGridLR`` config (string or class type)."""
    return isinstance(cfg,
                      dict) and cfg.get('type') in ('MultiGridLR', MultiGridLR)


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
    return _STOCK_FROM_CFG(cls, cfg)


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
