"""MultiGridRunner: the Runner that trains a config with ``multi_grid``.

It owns the run's :class:`~mmaction_multigrid.schedule.plan.MultiGridPlan`
and hands it to the pieces that read it: the batch sampler, the train loop,
``MultiGridLR`` and the hooks (``runner.plan``). None of them builds a
schedule or calls another.
"""
from mmaction.registry import PARAM_SCHEDULERS
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import RUNNERS
from mmengine.runner import EpochBasedTrainLoop, Runner

from ..datasets.sampler import ShortCycleBatchSampler
from ..models.sub_batch_bn import convert_sub_batch_bn, plain_bn_layers
from ..schedule.plan import MultiGridPlan
from .convert import convert_config
from .loop import MultiGridTrainLoop
from .lr import MultiGridLR
from .plan import build_plan, plan_for_samples

STOCK_FROM_CFG = Runner.from_cfg.__func__


@RUNNERS.register_module()
class MultiGridRunner(Runner):
    """A Runner that trains a config with ``multi_grid`` the multigrid way.

    ``from_cfg`` converts the config (see
    :func:`mmaction_multigrid.convert_config`), so the config dumped into the
    work dir is the converted one, and ``__init__`` builds the run's plan
    from it (:attr:`plan`). ``build_model`` makes BatchNorm layers
    sub-batch BN when ``multi_grid.bn_base_size`` is set; their checkpoint
    keys stay those of ``nn.BatchNorm3d``. ``build_dataloader`` gives the
    ``ShortCycleBatchSampler`` the plan; ``build_train_loop`` completes the
    plan with the sampler's sample count and runs an
    ``EpochBasedTrainLoop`` config as :class:`MultiGridTrainLoop` with it;
    ``build_param_scheduler`` gives ``MultiGridLR`` that plan, and
    ``resume`` moves it to the resumed iteration. Each method hands over to
    the next class with ``super()``, so the class also serves as a mixin for
    a user's Runner subclass
    (:func:`~mmaction_multigrid.engine.switch.multigrid_runner_class`).

    Attributes:
        plan (MultiGridPlan): The run's plan; with epoch lengths once the
            train loop is built.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.plan: MultiGridPlan = build_plan(self.cfg)

    @classmethod
    def from_cfg(cls, cfg) -> 'Runner':
        return STOCK_FROM_CFG(cls, convert_config(cfg))

    def build_model(self, model):
        model = super().build_model(model)
        base_size = self.cfg['multi_grid']['bn_base_size']
        if base_size:
            model = convert_sub_batch_bn(model, base_size)
        return model

    def build_dataloader(self, dataloader, *args, **kwargs):
        """``Runner.build_dataloader``; a ``ShortCycleBatchSampler`` gets
        the run's plan."""
        sampler = (
            dataloader.get('batch_sampler')
            if isinstance(dataloader, dict) else None)
        if isinstance(sampler, dict) and sampler.get('type') in (
                'ShortCycleBatchSampler', ShortCycleBatchSampler):
            dataloader = dict(
                dataloader, batch_sampler=dict(sampler, plan=self.plan))
        return super().build_dataloader(dataloader, *args, **kwargs)

    def build_train_loop(self, loop):
        """Build the train dataloader, complete :attr:`plan` with its
        per-rank sample count, and build a :class:`MultiGridTrainLoop` with
        that plan in place of an ``EpochBasedTrainLoop``."""
        if not _is_epoch_loop(loop):
            return super().build_train_loop(loop)
        loader_cfg = loader = self._train_dataloader
        if isinstance(loader, dict):
            loader = self.build_dataloader(
                loader,
                seed=self.seed,
                diff_rank_seed=self._randomness_cfg.get(
                    'diff_rank_seed', False))
        if not isinstance(loader.batch_sampler, ShortCycleBatchSampler):
            raise TypeError(
                'multi_grid needs train_dataloader.batch_sampler='
                'ShortCycleBatchSampler; a config with `multi_grid` gets it '
                'from the conversion (mmaction_multigrid.convert_config).')
        self.plan = plan_for_samples(self.plan,
                                     len(loader.batch_sampler.sampler))
        loop = {k: v for k, v in loop.items() if k != 'by_epoch'}
        # MMEngine 0.10.7 hands `_train_dataloader` to the loop as a default
        # argument (not deep-copied, unlike the loop config) and reads it
        # again as a config (auto_scale_lr): the built loader stands there
        # only while the loop is built.
        self._train_dataloader = loader
        try:
            return super().build_train_loop(
                dict(loop, type=MultiGridTrainLoop, plan=self.plan))
        finally:
            self._train_dataloader = loader_cfg

    def build_param_scheduler(self, scheduler):
        """Build the schedulers; ``MultiGridLR`` gets the run's plan.

        ``MultiGridLR`` is built here rather than by MMEngine, which
        deep-copies scheduler configs (MMEngine 0.10.7) and fills in an
        ``end`` that assumes equal epochs.
        """
        configs = scheduler if isinstance(scheduler, list) else [scheduler]
        if any(_is_multigrid_lr(c) for c in configs):
            if isinstance(self.optim_wrapper, OptimWrapperDict):
                raise ValueError(
                    'multi_grid supports one optimizer: optim_wrapper '
                    'builds several (OptimWrapperDict).')
            self.train_loop  # built first: it completes the plan
            configs = [
                PARAM_SCHEDULERS.build(
                    c,
                    default_args=dict(
                        optimizer=self.optim_wrapper, plan=self.plan))
                if _is_multigrid_lr(c) else c for c in configs
            ]
        return super().build_param_scheduler(configs)

    def resume(self, *args, **kwargs) -> None:
        """``Runner.resume``, then ``MultiGridLR`` continues at the plan's
        first iteration of the resumed epoch.

        A checkpoint of this very run holds that step already. One written
        without multigrid, or with another plan (other options, GPUs or
        data), holds another step count (or another scheduler's state,
        which ``MultiGridLR`` ignores): the LR then follows this plan from
        the resumed epoch on.
        """
        super().resume(*args, **kwargs)
        step = self.plan.steps_before(self.train_loop.epoch)
        for scheduler in _multigrid_schedulers(self.param_schedulers):
            if scheduler.last_step != step:
                self.logger.info(
                    f'Multigrid: the checkpoint\'s LR schedule stands at '
                    f'step {scheduler.last_step}; continuing at step {step},'
                    f' the start of epoch {self.train_loop.epoch + 1} of '
                    'this run\'s plan.')
                # As MMEngine's resume would set it: the state after
                # `step` iterations.
                scheduler.load_state_dict(
                    dict(
                        scheduler.state_dict(),
                        last_step=step - 1,
                        _global_step=step - 1))
                scheduler.step()

    def wrap_model(self, model_wrapper_cfg, model):
        # MMEngine 0.10.7's wrap_model undoes sub-batch BN: on one process
        # revert_sync_batchnorm turns SubBatchSyncBatchNorm into plain
        # _BatchNormXd; with cfg.sync_bn, convert_sync_batchnorm replaces
        # SubBatchNorm3d by SyncBatchNorm. Convert again after it.
        model = super().wrap_model(model_wrapper_cfg, model)
        base_size = self.cfg['multi_grid']['bn_base_size']
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


def _multigrid_schedulers(schedulers) -> list:
    """The ``MultiGridLR`` among ``runner.param_schedulers``."""
    if isinstance(schedulers, dict):
        schedulers = [s for group in schedulers.values() for s in group]
    return [s for s in schedulers or [] if isinstance(s, MultiGridLR)]
