"""A user's Runner subclass, named in ``runner_type`` or called directly,
trains multigrid and keeps its own methods; a runner that cannot be combined
with multigrid is refused."""
import pytest
import reference as ref
from conftest import toy_config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from probes import TINY_I3D, read_samples

import mmaction_multigrid  # noqa: F401  (installs the switch)
from mmaction_multigrid import MultiGridRunner
from mmaction_multigrid.runner import multigrid_runner_class

I3D = 'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py'
SHORT = (0.5, 0.5**0.5)
LONG = ((0.25, 0.5**0.5), (0.5, 0.5**0.5), (0.5, 1), (1, 1))


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


def config(videos, work_dir):
    """Stock E=2, milestone 1: 3 multigrid epochs on 16 videos."""
    cfg = toy_config(
        I3D,
        videos,
        work_dir=str(work_dir),
        max_epochs=2,
        milestones=(1, ),
        multi_grid=dict(),
        options=dict(
            TINY_I3D, **{
                'train_cfg.val_interval': 100,
                'default_hooks.checkpoint.interval': 100
            }))
    cfg.custom_imports['imports'].append('probes')
    cfg.custom_hooks.append(dict(type='SampleRecorder'))
    return cfg


def reference_shapes(n_train=16, T=32, S=32, E=2, milestones=(1, )):
    """[(epoch, iter, input shape)] of the reference schedule."""
    sched = ref.long_cycle(T, (S, S), E, milestones, LONG, SHORT, True, 1.5)
    rows = []
    for epoch in range(sched[-1][2]):
        _, base = ref.base_at(sched, epoch)
        cycle = ref.batches(1, base, (S, S), SHORT, True)
        for i in range(ref.epoch_batches(n_train, [c[0] for c in cycle])):
            size, (h, w) = cycle[i % len(cycle)]
            rows.append((epoch, i, [size, 3, base[1], h, w]))
    return rows


def test_runner_type_kept_and_trained_multigrid(videos, tmp_path):
    cfg = config(videos, tmp_path)
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
    assert got == reference_shapes()
    # Called directly, the subclass gets the same class (made once).
    cfg = config(videos, tmp_path / 'direct')
    assert type(AuditRunner.from_cfg(cfg)) is type(runner)
    assert multigrid_runner_class(Runner) is MultiGridRunner


def test_flexible_runner_refused(videos, tmp_path):
    cfg = config(videos, tmp_path)
    cfg.runner_type = 'FlexibleRunner'
    with pytest.raises(ValueError, match='runner_type=FlexibleRunner'):
        RUNNERS.build(cfg)
