"""MultiGridRunner and the import-time switch that routes configs with
``multi_grid`` to it.

``tools/train.py`` of MMAction2 builds its Runner with ``Runner.from_cfg``.
Importing this package (``custom_imports``) wraps that classmethod once: a
config with ``multi_grid`` is built by :class:`MultiGridRunner`, which
converts it first; any other config goes through the stock code unchanged.
"""
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import EpochBasedTrainLoop, Runner

from .bn import convert_sub_batch_bn, plain_bn_layers
from .convert import convert_config
from .loops import MultiGridTrainLoop

_STOCK_FROM_CFG = Runner.from_cfg.__func__


@RUNNERS.register_module()
class MultiGridRunner(Runner):
    """A Runner that trains a config with ``multi_grid`` the multigrid way.

    ``from_cfg`` converts the config (see
    :func:`mmaction_multigrid.convert_config`), so the config dumped into the
    work dir is the converted one. ``build_model`` makes BatchNorm layers
    sub-batch BN when ``multi_grid.bn_base_size`` is set; their checkpoint
    keys stay those of ``nn.BatchNorm3d``. ``build_train_loop`` runs an
    ``EpochBasedTrainLoop`` config as :class:`MultiGridTrainLoop` (the config
    itself is left as it is).
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
            self.logger.info(f'multi_grid: BN layer {name} left plain: '
                             f'{reason}.')
        if per_sample:
            counts = ', '.join(f'{n} {k}' for k, n in sorted(
                per_sample.items()))
            self.logger.info(
                f'multi_grid: {counts} layer(s) normalise each sample on '
                'its own; the batch size does not change them.')

    def build_train_loop(self, loop):
        if isinstance(loop, dict) and loop.get(
                'type', 'EpochBasedTrainLoop') in (
                    'EpochBasedTrainLoop', EpochBasedTrainLoop) and loop.get(
                        'by_epoch', True):
            loop = {k: v for k, v in loop.items() if k != 'by_epoch'}
            loop['type'] = MultiGridTrainLoop
        return super().build_train_loop(loop)


def _from_cfg(cls, cfg) -> Runner:
    """``Runner.from_cfg`` that sends configs with ``multi_grid`` to
    :class:`MultiGridRunner`."""
    if cfg.get('multi_grid') is not None and not issubclass(
            cls, MultiGridRunner):
        return MultiGridRunner.from_cfg(cfg)
    return _STOCK_FROM_CFG(cls, cfg)


def install_switch() -> None:
    """Route ``Runner.from_cfg`` of ``multi_grid`` configs to
    :class:`MultiGridRunner` (idempotent)."""
    if Runner.__dict__['from_cfg'].__func__ is not _from_cfg:
        Runner.from_cfg = classmethod(_from_cfg)
