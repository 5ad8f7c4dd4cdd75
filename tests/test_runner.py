"""A user's Runner subclass, named in ``runner_type`` or called directly,
trains multigrid and keeps its own methods; a runner that cannot be combined
with multigrid is refused."""
import inspect

import pytest
from conftest import scheduled, small_config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from probes import read_samples

import mmaction_multigrid  # noqa: F401  (installs the switch)
from mmaction_multigrid import MultiGridRunner, MultiGridSchedule
from mmaction_multigrid.engine.switch import multigrid_runner_class


@RUNNERS.register_module(force=True)
class AuditRunner(Runner):
    """A user's Runner: records its own overridden methods' calls."""

    calls: list = []

    def build_optim_wrapper(self, optim_wrapper):
        type(self).calls.append('build_optim_wrapper')
        return super().build_optim_wrapper(optim_wrapper)

    def build_train_loop(self, loop):
        type(self).calls.append('build_train_loop')
        return super().build_train_loop(loop)


def test_runner_type_kept_and_trained_multigrid(videos, tmp_path):
    cfg = small_config(videos, tmp_path)
    cfg.runner_type = 'AuditRunner'
    AuditRunner.calls = []
    runner = RUNNERS.build(cfg)  # as mmdet's / mmpretrain's train.py do
    assert isinstance(runner, AuditRunner)
    assert isinstance(runner, MultiGridRunner)
    assert type(runner).__name__ == 'MultiGridAuditRunner'
    # The dumped config names the user's runner; it is converted.
    assert runner.cfg.runner_type == 'AuditRunner'
    assert runner.cfg.train_dataloader.dataset.type == 'MultiGridDataset'
    runner.train()
    assert AuditRunner.calls == ['build_train_loop', 'build_optim_wrapper']
    got = [(r['epoch'], r['iter'], r['shape']) for r in read_samples(tmp_path)]
    assert got == scheduled(16)
    # Called directly, the subclass gets the same class (made once).
    cfg = small_config(videos, tmp_path / 'direct')
    assert type(AuditRunner.from_cfg(cfg)) is type(runner)
    assert multigrid_runner_class(Runner) is MultiGridRunner


def test_flexible_runner_refused(videos, tmp_path):
    cfg = small_config(videos, tmp_path)
    cfg.runner_type = 'FlexibleRunner'
    with pytest.raises(ValueError, match='runner_type=FlexibleRunner'):
        RUNNERS.build(cfg)


def test_one_schedule_construction_site(videos, tmp_path, monkeypatch):
    """A whole run builds its schedule in ``build_plan`` only: once for the
    conversion, once for the Runner's plan; the sampler, loop, LR and hooks
    share that plan."""
    callers = []
    init = MultiGridSchedule.__init__

    def counted(self, *args, **kwargs):
        callers.append(inspect.stack()[1].function)
        init(self, *args, **kwargs)

    monkeypatch.setattr(MultiGridSchedule, '__init__', counted)
    runner = Runner.from_cfg(small_config(videos, tmp_path))
    runner.train()
    assert callers == ['build_plan', 'build_plan']
    loop, plan = runner.train_loop, runner.plan
    assert loop.plan is plan and plan.epoch_lengths
    assert loop.dataloader.batch_sampler.schedule is plan.schedule
    lr = [s for s in runner.param_schedulers if hasattr(s, 'plan')]
    assert len(lr) == 1 and lr[0].plan is plan
