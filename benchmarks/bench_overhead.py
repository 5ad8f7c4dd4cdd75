"""Per-iteration overhead of the multigrid sampler, wrapper and hook at the
default shape, against the stock pipeline.

On the demo config (ResNet3d-18 with 16 base channels, 16x1 clips at 64x64,
batch 4) and the generated video set of ``bench_train.py``:

1. loop: ``N`` iterations of data loading (DataLoader, 2 workers) plus a
   fixed model step (forward, backward, SGD), stock (``DefaultSampler`` +
   ``batch_size``, plain ``VideoDataset``) against multigrid
   (``ShortCycleBatchSampler`` at the fine-tuning stage with short cycles
   off, i.e. always the default shape, over ``MultiGridDataset``) plus
   ``MultiGridHook.before_train_iter`` per iteration; rounds alternate A/B,
   medians are compared;
2. the parts measured directly: dataset ``__getitem__`` in-process (plain
   int on the stock dataset vs ``ShapedIndex`` of the default shape on the
   wrapper), the sampler's cost per batch, the hook's cost per call.

    python benchmarks/bench_overhead.py [--iters 30] [--rounds 3]
"""
import argparse
import os
import os.path as osp
import statistics
import sys
import time
import types

import torch
from mmaction.registry import DATASETS, MODELS
from mmengine.dataset import DefaultSampler, pseudo_collate
from mmengine.logging import MessageHub
from mmengine.registry import init_default_scope
from torch.utils.data import BatchSampler, DataLoader

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, osp.dirname(HERE))

from mmaction_multigrid.datasets.sampler import ShortCycleBatchSampler
from mmaction_multigrid.datasets.wrapper import MultiGridDataset, ShapedIndex
from mmaction_multigrid.engine.multigrid_hook import MultiGridHook
from mmaction_multigrid.tools.cli import DEMO_CONFIG, config_plan, load_config
from mmaction_multigrid.tools.synthetic import dataset_cfg, make_dataset


def median_time(fn, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--iters', type=int, default=30)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--work-dir', default='work_dirs/bench_train')
    args = parser.parse_args()
    init_default_scope('mmaction')
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - args.workers))
    torch.set_flush_denormal(True)
    print(f'load average {os.getloadavg()}')
    info = make_dataset(
        osp.join(args.work_dir, 'data_video'),
        videos_per_class=32,
        val_per_class=8)
    cfg = load_config(DEMO_CONFIG)
    ds_cfg = dataset_cfg(info, cfg.train_pipeline)
    batch = cfg.train_dataloader.batch_size
    stock_ds = DATASETS.build(ds_cfg)
    mg_ds = MultiGridDataset(ds_cfg)
    cfg.multi_grid.short_cycle = False
    mg_sampler = ShortCycleBatchSampler(
        DefaultSampler(mg_ds, seed=0), batch, plan=config_plan(cfg))
    last = mg_sampler.schedule.max_epochs - 1
    mg_sampler.set_epoch(last)
    shapes = mg_sampler.schedule.batch_shapes(last)
    assert [(s.batch_size, s.clip_len, s.size)
            for s in shapes] == [(batch, 16, (64, 64))], shapes
    stock_sampler = BatchSampler(
        DefaultSampler(stock_ds, seed=0), batch, drop_last=True)
    hook = MultiGridHook()
    runner = types.SimpleNamespace(
        message_hub=MessageHub.get_instance('bench_overhead'))

    model = MODELS.build(cfg.model)
    model.train()
    optim = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(data):
        data = model.data_preprocessor(data, True)
        losses = model(**data, mode='loss')
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        loss.backward()
        optim.step()
        optim.zero_grad()

    def loop(dataset, sampler, with_hook: bool) -> float:
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=args.workers,
            collate_fn=pseudo_collate,
            persistent_workers=False)
        it = iter(loader)
        step(next(it))  # warm-up: worker start, first step
        start = time.perf_counter()
        for i in range(args.iters):
            try:
                data = next(it)
            except StopIteration:
                it = iter(loader)
                data = next(it)
            if with_hook:
                hook.before_train_iter(runner, i, data)
            step(data)
        return (time.perf_counter() - start) / args.iters

    # 1. end-to-end loop, alternating rounds.
    stock_t, mg_t = [], []
    for r in range(args.rounds):
        stock_t.append(loop(stock_ds, stock_sampler, False))
        mg_t.append(loop(mg_ds, mg_sampler, True))
        print(
            f'round {r}: stock {stock_t[-1]:.4f} s/iter, multigrid '
            f'{mg_t[-1]:.4f} s/iter',
            flush=True)
    s, m = statistics.median(stock_t), statistics.median(mg_t)

    # 2. parts, directly.
    n = 64
    idx = list(range(n))
    default = ShapedIndex(0, 16, 2, 64, 64)
    get_stock = [
        statistics.median([median_time(lambda: stock_ds[i], 1) for i in idx])
        for _ in range(2)
    ]
    get_mg = [
        statistics.median([
            median_time(lambda: mg_ds[default._replace(index=i)], 1)
            for i in idx
        ]) for _ in range(2)
    ]
    get_stock, get_mg = min(get_stock), min(get_mg)

    def per_batch(sampler) -> float:
        start = time.perf_counter()
        k = 0
        for _ in range(20):
            for _ in sampler:
                k += 1
        return (time.perf_counter() - start) / k

    samp_stock, samp_mg = per_batch(stock_sampler), per_batch(mg_sampler)
    data = next(
        iter(
            DataLoader(
                mg_ds, batch_sampler=mg_sampler, collate_fn=pseudo_collate)))
    hook_t = median_time(lambda: hook.before_train_iter(runner, 0, data), 2000)
    direct = (batch * (get_mg - get_stock) + samp_mg - samp_stock + hook_t)

    print('\n| measure | stock | multigrid | difference | % of a stock '
          'iteration |')
    print('|---|---|---|---|---|')
    print(f'| loop: data + model step, s/iter (median of {args.rounds} x '
          f'{args.iters}) | {s:.4f} | {m:.4f} | {m - s:+.4f} | '
          f'{100 * (m - s) / s:+.2f}% |')
    print(f'| dataset __getitem__, ms/clip (in-process) | '
          f'{1e3 * get_stock:.3f} | {1e3 * get_mg:.3f} | '
          f'{1e3 * (get_mg - get_stock):+.3f} | '
          f'{100 * batch * (get_mg - get_stock) / s:+.2f}% (x{batch} clips,'
          ' in workers) |')
    print(f'| batch sampler, us/batch | {1e6 * samp_stock:.1f} | '
          f'{1e6 * samp_mg:.1f} | {1e6 * (samp_mg - samp_stock):+.1f} | '
          f'{100 * (samp_mg - samp_stock) / s:+.3f}% |')
    print(f'| MultiGridHook.before_train_iter, us/call | - | '
          f'{1e6 * hook_t:.1f} | {1e6 * hook_t:+.1f} | '
          f'{100 * hook_t / s:+.3f}% |')
    print(f'| sum of the direct parts (all on the critical path, an upper '
          f'bound) | | | {1e3 * direct:+.2f} ms | {100 * direct / s:+.2f}% |')
    print(f'\nload average {os.getloadavg()}')


if __name__ == '__main__':
    main()
