"""Speed cost of sub-batch BN over plain BN, per training iteration at the
largest multigrid batch.

Builds the stock I3D R50 model of the installed MMAction2, then times
forward + backward + SGD step on the first long-cycle stage's first
short-cycle batch (the largest: 16x the stock per-GPU batch at 1/4 of the
frames and half the crop), with plain BatchNorm3d and with sub-batch BN
(groups of the stock batch). The two models are timed in alternating
rounds; the fastest round's median counts for each. Prints both and the
overhead. Runs on the GPU when there is one (``--device`` to choose).

    python benchmarks/bench_sub_batch_bn.py [--stock-batch 2] [--size 224]
"""
import argparse
import copy
import os.path as osp
import time

import mmaction
import torch
from mmaction.registry import MODELS
from mmaction.utils import register_all_modules
from mmengine.config import Config

from mmaction_multigrid import MultiGridSchedule, convert_sub_batch_bn

I3D = ('i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_'
       'kinetics400-rgb.py')


def time_model(model: torch.nn.Module, inputs: torch.Tensor, iters: int,
               amp: bool) -> float:
    """Median seconds of one forward + backward + SGD step (under float16
    autocast with ``amp``)."""
    optim = torch.optim.SGD(model.parameters(), lr=1e-4)
    times = []
    for _ in range(iters + 1):
        start = time.perf_counter()
        with torch.autocast(inputs.device.type, torch.float16, enabled=amp):
            loss = model(inputs, mode='tensor').float().mean()
        loss.backward()
        optim.step()
        optim.zero_grad()
        if inputs.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def device_name(device: str) -> str:
    """The GPU's name, or the CPU thread count."""
    if device.startswith('cuda'):
        return torch.cuda.get_device_name(device)
    return f'CPU, {torch.get_num_threads()} threads'


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """``--device`` (the GPU when there is one) and ``--amp``."""
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='float16 autocast, as --amp in tools/train.py')


def build_i3d(device: str) -> torch.nn.Module:
    """The installed MMAction2's stock I3D R50 recognizer, random weights,
    in training mode on ``device``."""
    register_all_modules()
    cfg = Config.fromfile(
        osp.join(
            osp.dirname(mmaction.__file__), '.mim', 'configs', 'recognition',
            I3D))
    cfg.model.backbone.pretrained = None
    cfg.model.backbone.pretrained2d = False
    return MODELS.build(cfg.model).to(device).train()


def i3d_schedule(args: argparse.Namespace) -> MultiGridSchedule:
    """The multigrid schedule of the stock I3D R50 recipe (100 epochs,
    milestones 40 and 80) at ``args.clip_len`` x 2 frames, ``args.size``
    crops and ``args.stock_batch`` clips per GPU."""
    return MultiGridSchedule(
        args.clip_len,
        2,
        args.size,
        100, [40, 80],
        batch_size=args.stock_batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--stock-batch', type=int, default=2)
    parser.add_argument(
        '--size',
        type=int,
        default=224,
        help='default crop size S (224 in the stock config)')
    parser.add_argument('--clip-len', type=int, default=32)
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=2)
    add_device_args(parser)
    args = parser.parse_args()
    schedule = i3d_schedule(args)
    shape = max(schedule.batch_shapes(0), key=lambda s: s.batch_size)
    h, w = shape.size
    inputs = torch.randn(
        shape.batch_size, 1, 3, shape.clip_len, h, w, device=args.device)
    torch.manual_seed(0)
    plain = build_i3d(args.device)
    sub = convert_sub_batch_bn(copy.deepcopy(plain), args.stock_batch)
    t_plain = t_sub = float('inf')
    for _ in range(args.rounds):
        t_plain = min(t_plain, time_model(plain, inputs, args.iters, args.amp))
        t_sub = min(t_sub, time_model(sub, inputs, args.iters, args.amp))
    print(f'I3D R50, batch {shape.batch_size} x {shape.clip_len} frames x '
          f'{h}x{w} (stock batch {args.stock_batch}, S={args.size}), on '
          f'{device_name(args.device)}{", float16 autocast" * args.amp}')
    print(f'plain BN     : {t_plain * 1000:8.1f} ms/iter')
    print(f'sub-batch BN : {t_sub * 1000:8.1f} ms/iter '
          f'(groups of {args.stock_batch})')
    print(f'overhead     : {100 * (t_sub / t_plain - 1):+.1f}%')


if __name__ == '__main__':
    main()
