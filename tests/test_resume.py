"""Resume: a multigrid run killed with SIGKILL anywhere in the schedule and
restarted with ``tools/train.py CONFIG --resume`` continues exactly as the
uninterrupted run (same shapes, batch sizes, LR, sample order, final
weights), with 2 persistent data workers as without workers; resuming
foreign checkpoints says what it does. Expected shapes and LRs come from
``tests/reference.py``."""
import os
import os.path as osp
import random
import signal
import subprocess
import sys

import pytest
import reference as ref
import torch
from conftest import TESTS, TOOLS, toy_config
from mmengine.runner import Runner
from probes import TINY_I3D, read_samples, with_filenames

import mmaction_multigrid  # noqa: F401  (installs the switch)

I3D = 'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py'
# Stock E=4, milestones (2, 3): 6 multigrid epochs of [1, 1, 3, 6, 3, 6]
# iterations on 16 videos; stages with epochs: {0, 1}, {2}, {3}, {4}, {5}.
# Checkpoints every 2 epochs, so the stage boundaries at epochs 3 and 5 lie
# between two checkpoints. Default multi_grid (no precise BN), so sub-batch
# BN groups carry statistics across checkpoints; validation every epoch
# draws random numbers between a checkpoint and the next epoch.
LONG = ((0.25, 0.5**0.5), (0.5, 0.5**0.5), (0.5, 1), (1, 1))
SHORT = (0.5, 0.5**0.5)


def reference(epoch_factor=1.5):
    """The reference schedule of this toy run: stage entries, and per epoch
    the short cycle of (batch, size) and the number of iterations."""
    sched = ref.long_cycle(32, (32, 32), 4, [2, 3], LONG, SHORT, True,
                           epoch_factor)
    cycles = [
        ref.batches(1,
                    ref.base_at(sched, e)[1], (32, 32), SHORT, True)
        for e in range(sched[-1][2])
    ]
    lengths = [
        ref.epoch_batches(16, [c[0] for c in cycle]) for cycle in cycles
    ]
    return sched, cycles, lengths


def reference_lr(sched, epoch):
    return 0.001 * ref.lr_factor(epoch, sched, 0.1, 2, True)


def resume_config(videos, multi_grid=None, checkpoint_interval=2, workers=2):
    """The toy run; with ``workers``, persistent data workers."""
    cfg = toy_config(
        I3D,
        videos,
        multi_grid=multi_grid or dict(),
        options=dict(
            TINY_I3D, **{
                'default_hooks.checkpoint.interval': checkpoint_interval,
                'train_dataloader.num_workers': workers,
                'train_dataloader.persistent_workers': workers > 0
            }))
    cfg.custom_imports['imports'].append('probes')
    cfg.custom_hooks += [dict(type='SampleRecorder'), dict(type='KillAt')]
    with_filenames(cfg)
    return cfg


def train_tool(config, work_dir, resume=False, kill_at=None):
    """``python tools/train.py CONFIG [--resume]`` in a fresh process."""
    env = dict(
        os.environ,
        PYTHONPATH=TESTS + os.pathsep + os.environ.get('PYTHONPATH', ''),
        OMP_NUM_THREADS='1',
        TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')
    env.pop('MG_KILL_AT', None)
    if kill_at is not None:
        env['MG_KILL_AT'] = '%d:%d' % kill_at
    cmd = [
        sys.executable,
        osp.join(TOOLS, 'train.py'),
        str(config), '--work-dir',
        str(work_dir)
    ] + (['--resume'] if resume else [])
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=600)


def kill_points(seed=0):
    """One random (epoch, iter) in every stage that has epochs."""
    sched, _, lengths = reference()
    stage_of = [
        min(i for i, s in enumerate(sched) if s[2] > e)
        for e in range(len(lengths))
    ]
    rng = random.Random(seed)
    points = []
    for stage in sorted(set(stage_of)):
        epoch = rng.choice([e for e, s in enumerate(stage_of) if s == stage])
        points.append((epoch, rng.randrange(lengths[epoch])))
    return points


@pytest.fixture(scope='module')
def uninterrupted(videos, tmp_path_factory):
    """The run with 2 persistent workers, uninterrupted."""
    root = tmp_path_factory.mktemp('resume')
    config = root / 'mg.py'
    resume_config(videos).dump(str(config))
    proc = train_tool(config, root / 'straight')
    assert proc.returncode == 0, proc.stderr[-3000:]
    return config, root / 'straight'


def assert_same_weights(a_path, b_path, context=None):
    a = torch.load(a_path, map_location='cpu')
    b = torch.load(b_path, map_location='cpu')
    assert a['state_dict'].keys() == b['state_dict'].keys()
    for key, value in a['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), (key, context)
    for x, y in zip(a['optimizer']['state'].values(),
                    b['optimizer']['state'].values()):
        assert torch.equal(x['momentum_buffer'], y['momentum_buffer'])


def test_workers_do_not_change_the_run(uninterrupted, videos, tmp_path):
    """Every sample is seeded from its place in the run: without workers,
    the same batches and the same final weights, bit for bit."""
    _, straight = uninterrupted
    config = tmp_path / 'mg0.py'
    resume_config(videos, workers=0).dump(str(config))
    proc = train_tool(config, tmp_path / 'no_workers')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_samples(tmp_path / 'no_workers') == read_samples(straight)
    assert_same_weights(straight / 'epoch_6.pth',
                        tmp_path / 'no_workers' / 'epoch_6.pth')


def by_step(records):
    return {(r['epoch'], r['iter']): r for r in records}


def test_killed_anywhere_resumes_exactly(uninterrupted, tmp_path):
    config, straight = uninterrupted
    work = tmp_path / 'killed'
    points = kill_points(int(os.environ.get('MG_KILL_SEED', 0)))
    assert len(points) >= 5
    for point in points:
        proc = train_tool(config, work, resume=True, kill_at=point)
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-3000:])
    proc = train_tool(config, work, resume=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Every iteration any of the processes ran (killed, replayed, resumed)
    # got the uninterrupted run's shape, batch size, LR and samples.
    want = by_step(read_samples(straight))
    got = read_samples(work)
    assert set(by_step(got)) == set(want)
    for record in got:
        assert record == want[(record['epoch'], record['iter'])], points
    # Resumes really happened from checkpoints mid-schedule.
    logs = '\n'.join(p.read_text() for p in work.glob('*/*.log'))
    assert logs.count('resumed epoch: 2') >= 1, points
    assert logs.count('resumed epoch: 4') >= 1, points

    assert_same_weights(straight / 'epoch_6.pth', work / 'epoch_6.pth', points)


def test_checkpoint_keeps_multigrid_state(uninterrupted):
    _, straight = uninterrupted
    ckpt = torch.load(straight / 'epoch_4.pth', map_location='cpu')
    state = ckpt['multi_grid']
    (steps, ) = [
        s for s in state['schedule']['stock.param_scheduler']
        if s['type'] == 'MultiStepLR'
    ]
    assert steps['milestones'] == [2, 3]
    assert state['schedule']['stock.batch_size'] == 1
    assert state['schedule']['epoch_factor'] == 1.5
    assert len(state['ranks']) == 1
    assert set(state['ranks'][0]['rng']) == {'python', 'numpy', 'torch'}
    assert ckpt['param_schedulers'][0]['type'] == 'MultiGridLR'
    # The model's checkpoint keys stay those of stock BatchNorm3d.
    assert not any('split' in k for k in ckpt['state_dict'])


class Stop(Exception):
    pass


def _run_until_first_iter(cfg):
    """Train in this process; stop at the first iteration, return the LR
    and shape it used and the log text."""
    runner = Runner.from_cfg(cfg)
    seen = {}

    def stop(module, args):
        if module.training:
            seen.update(
                shape=list(args[0].shape),
                epoch=runner.epoch,
                lr=runner.optim_wrapper.param_groups[0]['lr'])
            raise Stop

    runner.model.backbone.register_forward_pre_hook(stop)
    with pytest.raises(Stop):
        runner.train()
    log = next(
        osp.join(runner.log_dir, f) for f in os.listdir(runner.log_dir)
        if f.endswith('.log'))
    with open(log) as f:
        return seen, f.read()


def test_resume_checkpoint_without_plugin(videos, tmp_path):
    """A stock run's checkpoint, resumed with multi_grid added: warned, and
    the multigrid schedule (shape, LR) applies from the saved epoch."""
    stock = resume_config(videos)
    stock.pop('multi_grid')
    stock.custom_imports['imports'].remove('mmaction_multigrid')
    stock.train_cfg.max_epochs = 1
    stock.work_dir = str(tmp_path / 'stock')
    Runner.from_cfg(stock).train()
    cfg = resume_config(videos)
    cfg.work_dir = str(tmp_path / 'mg')
    cfg.resume = True
    cfg.load_from = str(tmp_path / 'stock' / 'epoch_1.pth')
    seen, log = _run_until_first_iter(cfg)
    assert 'written without mmaction-multigrid' in log
    assert 'from epoch 1' in log
    # 16 stock iterations done, where multigrid epoch 0 has 1: the LR
    # follows the epoch, not the iteration count.
    sched, cycles, _ = reference()
    batch, size = cycles[1][0]
    assert seen['epoch'] == 1
    assert seen['shape'] == [batch, 3, ref.base_at(sched, 1)[1][1], *size]
    assert seen['lr'] == pytest.approx(reference_lr(sched, 1))


def test_resume_with_other_settings(uninterrupted, videos, tmp_path):
    _, straight = uninterrupted
    cfg = resume_config(videos, multi_grid=dict(epoch_factor=2.0))
    cfg.work_dir = str(tmp_path / 'other')
    cfg.resume = True
    cfg.load_from = str(straight / 'epoch_4.pth')
    seen, log = _run_until_first_iter(cfg)
    assert 'other multigrid settings (epoch_factor differ)' in log
    assert 'continues from epoch 4' in log
    sched, _, _ = reference(epoch_factor=2.0)
    assert seen['epoch'] == 4
    assert seen['lr'] == pytest.approx(reference_lr(sched, 4))
