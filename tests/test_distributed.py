"""Distributed multigrid training: two real processes (gloo, CPU) through the
real Runner, compared with one process training the same global batch, and
each resumed on the other number of processes."""
import os
import os.path as osp
import socket
import subprocess
import sys
import time
from collections import defaultdict

import pytest
import reference as ref
import torch
from conftest import TESTS, toy_config
from mmengine.config import Config
from mmengine.runner import Runner
from probes import TINY_I3D, read_samples, with_filenames

import mmaction_multigrid  # noqa: F401  (installs the switch)

I3D = 'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py'
WORLD = 2
# Two long-cycle shapes keep the biggest batch at 8 clips per GPU, so 16
# videos (8 per rank) give 1 + 3 + 3 iterations over three epochs, each a
# full short cycle. bn_base_size=1 normalises every clip on its own, so one
# process with the doubled batch computes exactly what the two ranks do.
# Precise BN after every epoch: every checkpoint holds recomputed statistics.
# bn_grouping='size': groups of one clip on any number of ranks.
MULTI_GRID = dict(
    long_cycle_factors=((0.5, 1), (1, 1)),
    bn_base_size=1,
    bn_grouping='size',
    precise_bn=dict(num_iters=2, interval=1))


def config(videos, work_dir, batch_size, distributed):
    cfg = toy_config(
        I3D,
        videos,
        work_dir=str(work_dir),
        max_epochs=2,
        milestones=(1, ),
        batch_size=batch_size,
        multi_grid=dict(MULTI_GRID),
        options=dict(
            TINY_I3D, **{
                'model.cls_head.dropout_ratio': 0.0,
                'train_cfg.val_interval': 100,
                'optim_wrapper.optimizer.lr': 1e-5
            }))
    # Augmentations off (centre crop, no flip, fixed frame offsets): the
    # ranks and the single process draw random numbers differently, the
    # comparison is about the multigrid data split, shapes, LR and BN.
    pipeline = cfg.train_dataloader.dataset.pipeline
    pipeline[1]['test_mode'] = True
    pipeline[:] = [t for t in pipeline if t['type'] != 'Flip']
    for i, t in enumerate(pipeline):
        if t['type'] == 'MultiScaleCrop':
            pipeline[i] = dict(type='CenterCrop', crop_size=32)
    with_filenames(cfg)
    cfg.custom_imports['imports'].append('probes')
    cfg.custom_hooks.append(dict(type='SampleRecorder'))
    if distributed:
        cfg.launcher = 'pytorch'
        # MMEngine's default wrapper passes device_ids=[LOCAL_RANK], which
        # DDP refuses for a CPU module; device_ids=None is the CPU form.
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False)
    return cfg


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(config_path, world=WORLD, timeout=240):
    """Run ``dist_driver.py`` as ``world`` ranks; fail with the children's
    tracebacks if any rank fails (the others are then stopped)."""
    port = str(free_port())
    logs = [
        osp.join(osp.dirname(config_path), f'rank{r}.err')
        for r in range(world)
    ]
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            MASTER_ADDR='127.0.0.1',
            MASTER_PORT=port,
            OMP_NUM_THREADS='1',
            PYTHONPATH=TESTS + os.pathsep + os.environ.get('PYTHONPATH', ''))
        with open(logs[rank], 'w') as err:
            procs.append(
                subprocess.Popen([
                    sys.executable,
                    osp.join(TESTS, 'dist_driver.py'),
                    str(config_path)
                ],
                                 env=env,
                                 stdout=subprocess.DEVNULL,
                                 stderr=err))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            failed = any(p.poll() not in (None, 0) for p in procs)
            if failed or time.monotonic() > deadline:
                time.sleep(3)  # let the other ranks report their error
                break
            time.sleep(0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    codes = [p.returncode for p in procs]
    if any(codes):
        report = []
        for rank, (code, log) in enumerate(zip(codes, logs)):
            with open(log) as f:
                report.append(f'--- rank {rank} exited {code}:\n'
                              f'{f.read()[-4000:]}')
        pytest.fail('\n'.join(report), pytrace=False)


def per_epoch(records):
    out = defaultdict(list)
    for r in records:
        out[r['epoch']].append(r)
    return out


@pytest.fixture(scope='module')
def runs(videos, tmp_path_factory):
    root = tmp_path_factory.mktemp('dist')
    cfg = config(videos, root / 'ddp', batch_size=1, distributed=True)
    cfg.dump(str(root / 'ddp.py'))
    launch(root / 'ddp.py')
    single = config(videos, root / 'single', batch_size=2, distributed=False)
    Runner.from_cfg(single).train()
    return root / 'ddp', root / 'single'


def test_ranks_step_together(runs):
    ddp, _ = runs
    ranks = [read_samples(ddp, r) for r in range(WORLD)]
    want = [
        row[:3] for row in ref.expected_run(
            16 // WORLD,
            32,
            32,
            1,
            2, [1],
            1e-5,
            long_factors=MULTI_GRID['long_cycle_factors'])
    ]
    assert [sum(w[0] == e for w in want) for e in range(3)] == [1, 3, 3]
    for records in ranks:
        # Per-GPU batch sizes, same iterations and short-cycle phase.
        assert [(r['epoch'], r['iter'], r['shape']) for r in records] == want
        assert [r['lr'] for r in records] == [r['lr'] for r in ranks[0]]


def test_ranks_split_the_data(runs):
    ddp, _ = runs
    ranks = [per_epoch(read_samples(ddp, r)) for r in range(WORLD)]
    for epoch in ranks[0]:
        files = [[f for r in rank[epoch] for f in r['files']]
                 for rank in ranks]
        for own in files:
            assert len(own) == len(set(own))
            assert not any('corrupt' in f for f in own)
        assert not set(files[0]) & set(files[1]), epoch


def test_same_as_one_process_with_global_batch(runs):
    ddp, single = runs
    ranks = [read_samples(ddp, r) for r in range(WORLD)]
    one = read_samples(single)
    assert len(one) == len(ranks[0])
    for r0, r1, s in zip(*ranks, one):
        assert (s['epoch'], s['iter']) == (r0['epoch'], r0['iter'])
        assert s['shape'] == [2 * r0['shape'][0]] + r0['shape'][1:]
        assert s['lr'] == pytest.approx(r0['lr'], rel=1e-12)
        # The global batch is the same clips, split over the ranks.
        assert sorted(s['files']) == sorted(r0['files'] + r1['files'])
    # Same weights. The toy model amplifies float rounding (1 vs 2 threads
    # alone moves the updates by ~1e-3), so the updates are compared to a
    # tolerance far below what a wrong split or BN grouping gives (~1).
    ckpts = [[load(osp.join(run, f'epoch_{e}.pth')) for e in (1, 3)]
             for run in (ddp, single)]
    (d1, d3), (s1, s3) = [[c['state_dict'] for c in run] for run in ckpts]
    for key, value in s3.items():
        if not value.is_floating_point() or 'running_var' in key:
            continue
        if 'running_mean' in key:  # precise BN: same clips, same means
            for got, want in ((d1, s1), (d3, s3)):
                torch.testing.assert_close(
                    got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)
            continue
        torch.testing.assert_close(
            d1[key], s1[key], rtol=1e-5, atol=1e-7, msg=key)
        update, want = d3[key] - d1[key], value - s1[key]
        assert (update - want).norm() <= 0.05 * want.norm() + 1e-9, key


def load(path):
    return torch.load(path, map_location='cpu')


def test_checkpoint_keeps_every_rank(runs):
    ddp, _ = runs
    state = load(osp.join(ddp, 'epoch_3.pth'))['multi_grid']
    assert len(state['ranks']) == WORLD


# --------------------------------------------------------------------------
# Resume on another number of processes: the schedule follows the epoch.
# --------------------------------------------------------------------------
def reference_rows(n_per_rank, batch_size, first_epoch):
    """[(epoch, iter, input shape, lr)] from ``first_epoch`` on, per the
    reference (tests/reference.py), for one rank of ``n_per_rank`` samples
    and a per-GPU ``batch_size``."""
    long_factors = MULTI_GRID['long_cycle_factors']
    short = (0.5, 0.5**0.5)
    sched = ref.long_cycle(32, (32, 32), 2, [1], long_factors, short, True,
                           1.5)
    rows = []
    for epoch in range(first_epoch, sched[-1][2]):
        _, base = ref.base_at(sched, epoch)
        cycle = ref.batches(batch_size, base, (32, 32), short, True)
        n = ref.epoch_batches(n_per_rank, [c[0] for c in cycle])
        for i in range(n):
            size, (h, w) = cycle[i % len(cycle)]
            lr = 1e-5 * ref.lr_factor(epoch + i / n, sched, 0.1, 1, True)
            rows.append((epoch, i, [size, 3, base[1], h, w], lr))
    return rows


def assert_follows_reference(records, want):
    assert [(r['epoch'], r['iter'], r['shape'])
            for r in records] == [w[:3] for w in want]
    for record, row in zip(records, want):
        assert record['lr'] == pytest.approx(row[3], rel=1e-9), record


def test_two_processes_resumed_on_one(runs, videos, tmp_path):
    """The 2-rank run's epoch-1 checkpoint (1 iteration done per rank),
    resumed by one process with the same per-GPU batch: 16 samples per
    epoch now, so 3 + 6 iterations where the ranks ran 1 + 3."""
    ddp, _ = runs
    cfg = config(videos, tmp_path, batch_size=1, distributed=False)
    cfg.resume = True
    cfg.load_from = osp.join(ddp, 'epoch_1.pth')
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert_follows_reference(
        read_samples(tmp_path), reference_rows(16, 1, first_epoch=1))
    assert runner.epoch == 3


def test_one_process_resumed_on_two(runs, tmp_path):
    """The one-process run's epoch-1 checkpoint resumed by 2 ranks, each
    with half its batch; both ranks follow the schedule from epoch 1."""
    _, single = runs
    cfg = Config.fromfile(str(single.parent / 'ddp.py'))
    cfg.work_dir = str(tmp_path)
    cfg.resume = True
    cfg.load_from = osp.join(single, 'epoch_1.pth')
    cfg.dump(str(tmp_path / 'resume.py'))
    launch(tmp_path / 'resume.py')
    want = reference_rows(16 // WORLD, 1, first_epoch=1)
    for rank in range(WORLD):
        assert_follows_reference(read_samples(tmp_path, rank), want)
    log = next(tmp_path.glob('*/*.log')).read_text()
    assert 'resumed epoch: 1' in log
