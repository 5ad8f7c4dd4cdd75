"""Compute time of a whole multigrid schedule against the stock one, from
the measured time of each mini-batch shape (no data loading).

For the stock I3D R50 of the installed MMAction2 (``--clip-len`` frames,
crop ``--size``, ``--stock-batch`` clips per GPU, 100 epochs, milestones 40
and 80) it times forward + backward + SGD step on random inputs of every
distinct mini-batch shape of the multigrid schedule and of the stock shape
(with sub-batch BN in groups of the stock batch, what the conversion does
by default, which is plain BN at the stock batch; ``--plain-bn`` for plain
BN throughout), then adds them up over both schedules for a data set of
``--samples`` clips per GPU. The ratio is the speedup the hardware
realises from the schedule's compute saving, whose ceiling (1 / compute
ratio, counting ``frames*height*width`` per clip) it prints beside it. On
a GPU it shows whether small shapes keep the device busy; data loading is
left out (see
bench_train.py and bench_data.py for that).

    python benchmarks/bench_shapes.py [--stock-batch 8] [--amp]
"""
import argparse
import os.path as osp
import sys

import torch

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, osp.dirname(HERE))

from bench_sub_batch_bn import (add_device_args, build_i3d, device_name,
                                i3d_schedule, time_model)

from mmaction_multigrid import convert_sub_batch_bn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--stock-batch', type=int, default=8)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--clip-len', type=int, default=32)
    parser.add_argument(
        '--samples',
        type=int,
        default=30000,
        help='training clips per GPU per epoch')
    parser.add_argument('--iters', type=int, default=5)
    add_device_args(parser)
    parser.add_argument(
        '--plain-bn',
        action='store_true',
        help='multigrid shapes with plain BN '
        '(multi_grid.bn_base_size=None)')
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = False  # the stock configs' setting
    schedule = i3d_schedule(args)
    model = build_i3d(args.device)
    if not args.plain_bn:  # plain BN at the stock batch size itself
        model = convert_sub_batch_bn(model, args.stock_batch)
    times = {}

    def seconds(batch: int, clip_len: int, h: int, w: int) -> float:
        key = (batch, clip_len, h, w)
        if key not in times:
            inputs = torch.randn(
                batch, 1, 3, clip_len, h, w, device=args.device)
            times[key] = time_model(model, inputs, args.iters, args.amp)
            print(
                f'{batch:4d} x {clip_len:2d} x {h:3d}x{w:<3d}: '
                f'{times[key] * 1000:8.1f} ms/iter, '
                f'{batch / times[key]:7.1f} clips/s',
                flush=True)
        return times[key]

    stock = seconds(args.stock_batch, args.clip_len, args.size, args.size)
    stock_total = (
        schedule.stock_max_epochs * (args.samples // args.stock_batch) * stock)
    total = 0.0
    for epoch in range(schedule.max_epochs):
        shapes = schedule.batch_shapes(epoch)
        n = schedule.num_batches(epoch, args.samples)
        total += sum(
            seconds(s.batch_size, s.clip_len, *s.size)
            for s in (shapes[i % len(shapes)] for i in range(n)))
    print(f'I3D R50, stock batch {args.stock_batch} x {args.clip_len} x '
          f'{args.size}x{args.size}, {args.samples} clips per epoch, on '
          f'{device_name(args.device)}{", float16 autocast" * args.amp}, '
          f'multigrid with {"plain" if args.plain_bn else "sub-batch"} BN')
    print(f'stock 100 epochs: {stock_total / 3600:.2f} h of compute; '
          f'multigrid {schedule.max_epochs} epochs: {total / 3600:.2f} h')
    print(f'speedup {stock_total / total:.2f}x; schedule compute ceiling '
          f'{1 / schedule.compute_ratio():.2f}x')


if __name__ == '__main__':
    main()
