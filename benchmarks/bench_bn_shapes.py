"""Sub-batch BN against plain BN at every multigrid batch shape, on one
device, like for like in one run.

Builds the stock I3D R50 of the installed MMAction2 (random weights) and, at
each distinct batch shape of the default multigrid schedule (and the stock
shape), times forward + backward + SGD step on random inputs for each BN
formulation of ``--variants``, in alternating rounds (the least median of
the rounds counts):

- ``plain``: ``nn.BatchNorm3d`` (statistics over the whole batch);
- ``sub``: the package's ``SubBatchNorm3d`` (groups of ``--stock-batch``);
- ``sub-nocudnn``: the same with the native BatchNorm kernels instead of
  cuDNN's for the grouped call (a GPU question only).

With ``--profile`` it then prints ``torch.profiler``'s top kernels for
``plain`` and ``sub`` at the largest batch. ``--out`` writes the figures as
JSON with the command, date, host, versions and git commit.

    python benchmarks/bench_bn_shapes.py [--stock-batch 8] [--amp]
        [--channels-last] [--profile] [--out FILE]
"""
import argparse
import contextlib
import copy
import os.path as osp
import sys
from typing import Dict, List, Tuple

import torch

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, osp.dirname(HERE))

from bench_sub_batch_bn import (add_device_args, build_i3d, device_name,
                                i3d_schedule, time_model)
from result_json import write_result

from mmaction_multigrid import MultiGridSchedule
from mmaction_multigrid import bn as bn_module
from mmaction_multigrid import convert_sub_batch_bn

Key = Tuple[int, int, int, int]


@contextlib.contextmanager
def native_bn_kernels():
    """The grouped BatchNorm call of sub-batch BN without cuDNN."""
    stock = bn_module._batch_norm

    def no_cudnn(*args, **kwargs):
        with torch.backends.cudnn.flags(enabled=False):
            return stock(*args, **kwargs)

    bn_module._batch_norm = no_cudnn
    try:
        yield
    finally:
        bn_module._batch_norm = stock


def batch_keys(schedule: MultiGridSchedule, stock: Key) -> List[Key]:
    """The stock shape, then every distinct multigrid batch shape, largest
    batch first."""
    keys = {(s.batch_size, s.clip_len, *s.size)
            for e in range(schedule.max_epochs)
            for s in schedule.batch_shapes(e)}
    return [stock] + sorted(keys - {stock}, reverse=True)


def profile_table(model, inputs, amp: bool, rows: int = 12) -> str:
    """``torch.profiler`` table of the top kernels of two training steps."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU]
    sort = 'self_cpu_time_total'
    if inputs.is_cuda:
        activities.append(ProfilerActivity.CUDA)
        sort = 'self_cuda_time_total'
    time_model(model, inputs, 1, amp)
    with profile(activities=activities) as prof:
        time_model(model, inputs, 1, amp)
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--stock-batch', type=int, default=8)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--clip-len', type=int, default=32)
    parser.add_argument('--iters', type=int, default=5)
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument(
        '--variants', nargs='+', default=['plain', 'sub', 'sub-nocudnn'])
    parser.add_argument(
        '--channels-last',
        action='store_true',
        help='model and inputs in channels_last_3d memory format')
    parser.add_argument('--profile', action='store_true')
    parser.add_argument('--out', help='JSON file for the figures')
    add_device_args(parser)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = False  # the stock configs' setting
    schedule = i3d_schedule(args)
    torch.manual_seed(0)
    plain = build_i3d(args.device)
    sub = convert_sub_batch_bn(copy.deepcopy(plain), args.stock_batch)
    fmt = torch.channels_last_3d if args.channels_last else None
    if fmt is not None:
        plain, sub = plain.to(memory_format=fmt), sub.to(memory_format=fmt)
    models = {'plain': plain, 'sub': sub, 'sub-nocudnn': sub}
    contexts = {'sub-nocudnn': native_bn_kernels}
    stock = (args.stock_batch, args.clip_len, args.size, args.size)
    print(f'I3D R50 on {device_name(args.device)}'
          f'{", float16 autocast" * args.amp}'
          f'{", channels_last_3d" * args.channels_last}; forward + backward'
          ' + SGD step, ms (least median of rounds)')
    print('batch x frames x HxW   ' +
          ''.join(f'{v:>13}' for v in args.variants) + '   sub/plain')
    table: Dict[str, Dict[str, float]] = {}
    for key in batch_keys(schedule, stock):
        batch, t, h, w = key
        inputs = torch.randn(batch, 1, 3, t, h, w, device=args.device)
        if fmt is not None:
            inputs = inputs.view(batch, 3, t, h, w).contiguous(
                memory_format=fmt).view(batch, 1, 3, t, h, w)
        best = {v: float('inf') for v in args.variants}
        for _ in range(args.rounds):
            for v in args.variants:
                with contexts.get(v, contextlib.nullcontext)():
                    best[v] = min(
                        best[v],
                        time_model(models[v], inputs, args.iters, args.amp))
        row = {v: 1e3 * s for v, s in best.items()}
        table[f'{batch}x{t}x{h}x{w}'] = row
        ratio = (f'{row["sub"] / row["plain"]:10.3f}'
                 if {'sub', 'plain'} <= set(row) else '')
        print(
            f'{batch:5d} x {t:2d} x {h:3d}x{w:<3d}  ' +
            ''.join(f'{row[v]:13.1f}' for v in args.variants) + ratio,
            flush=True)
    if args.profile:
        batch, t, h, w = batch_keys(schedule, stock)[1]
        inputs = torch.randn(batch, 1, 3, t, h, w, device=args.device)
        for v in ('plain', 'sub'):
            print(f'\n### profile: {v}, {batch} x {t} x {h}x{w}')
            print(profile_table(models[v], inputs, args.amp))
    if args.out:
        write_result(
            args.out,
            dict(
                figure='sub-batch BN against plain BN per batch shape',
                device=device_name(args.device),
                amp=args.amp,
                channels_last=args.channels_last,
                stock_batch=args.stock_batch,
                ms_per_iter=table))


if __name__ == '__main__':
    main()
