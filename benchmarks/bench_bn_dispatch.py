"""CPU time to launch one BN layer's forward + backward: plain BatchNorm3d
against sub-batch BN, on tensors so small that the arithmetic is nothing.

On a GPU the training process launches every kernel; at the multigrid
shapes of I3D R50 an H200 finishes a layer's kernels about as fast as the
CPU issues them, so every microsecond of Python and dispatch per BN layer
(53 in I3D R50) shows in the iteration time. This measures that cost where
it arises, on the CPU: the least of ``--rounds`` means of ``--iters``
forward + backward calls of one layer on a (16, 4, 1, 2, 2) input in 4
groups, alternating the two layers.

    python benchmarks/bench_bn_dispatch.py [--out FILE]
"""
import argparse
import os.path as osp
import sys
import time

import torch
import torch.nn as nn

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, osp.dirname(HERE))

from result_json import write_result

from mmaction_multigrid import SubBatchNorm3d


def microseconds(layer: nn.Module, x: torch.Tensor, iters: int) -> float:
    """Mean microseconds of one forward + backward of ``layer``."""
    grad = torch.ones_like(x)
    start = time.perf_counter()
    for _ in range(iters):
        layer(x).backward(grad)
    return (time.perf_counter() - start) / iters * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--iters', type=int, default=500)
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--out', help='JSON file for the figures')
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(16, 4, 1, 2, 2, requires_grad=True)
    layers = {
        'plain': nn.BatchNorm3d(4),
        'sub': SubBatchNorm3d(4, base_size=4)
    }
    best = {name: float('inf') for name in layers}
    for name, layer in layers.items():
        microseconds(layer, x, 20)  # warm-up
    for _ in range(args.rounds):
        for name, layer in layers.items():
            best[name] = min(best[name], microseconds(layer, x, args.iters))
    extra = best['sub'] - best['plain']
    print(f'plain BN {best["plain"]:.1f} us, sub-batch BN {best["sub"]:.1f} '
          f'us per layer forward + backward; sub-batch BN adds {extra:.1f} '
          f'us per layer, {53 * extra / 1e3:.2f} ms per I3D R50 iteration')
    if args.out:
        write_result(
            args.out,
            dict(
                figure='CPU dispatch time of one BN layer, forward + backward',
                us_per_layer=best,
                extra_ms_per_i3d_r50_iteration=53 * extra / 1e3))


if __name__ == '__main__':
    main()
