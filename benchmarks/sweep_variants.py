"""Top-1 of ``multi_grid`` variants over several seeds, runs in parallel.

Each run is one ``benchmarks/bench_train.py`` process (the demo benchmark,
one run, its own data and work folder), so on a machine with many cores (or
a GPU) the seed-to-seed spread of the demo can be measured in minutes.
A variant is ``NAME`` (``stock``: the config without ``multi_grid``) or
``NAME=KEY=VALUE[;KEY=VALUE...]`` with ``multi_grid`` entries as Python
literals; ``base`` is the defaults. Prints one line per finished run and, at
the end, the mean top-1 per variant; writes
``work_dirs/benchmarks/sweep<tag>.json``.

    python benchmarks/sweep_variants.py --schedule cosine --seeds 0 1 2 3 4 \
        --parallel 10 --variants stock base "long=short_cycle=False"
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List

from result_json import write_result

HERE = osp.dirname(osp.abspath(__file__))
RESULTS = osp.join(osp.dirname(HERE), 'work_dirs', 'benchmarks')


def parse_variant(text: str) -> Dict[str, List[str]]:
    """``NAME[=KEY=VALUE;...]`` -> {name: bench_train.py arguments}."""
    name, _, options = text.partition('=')
    if name == 'stock':
        return {name: ['--only', 'stock']}
    args = ['--only', 'multigrid']
    if options:
        args += ['--multi-grid'] + options.split(';')
    return {name: args}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--variants', nargs='+', required=True)
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--parallel', type=int, default=1)
    parser.add_argument('--schedule', choices=['step', 'cosine'])
    parser.add_argument('--epochs', type=int, default=30)
    parser.add_argument('--workers', type=int, default=1)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--crop', choices=['demo', 'rrc'], default='demo')
    parser.add_argument('--tag', default='')
    args = parser.parse_args()
    variants = {}
    for text in args.variants:
        variants.update(parse_variant(text))
    jobs = [(seed, name) for seed in args.seeds for name in variants]
    os.makedirs(RESULTS, exist_ok=True)
    out = osp.join(RESULTS, f'sweep{args.tag}.json')
    results, running, start = [], [], time.time()
    while jobs or running:
        while jobs and len(running) < args.parallel:
            seed, name = jobs.pop(0)
            tag = f'_sweep{args.tag}_{name}_s{seed}'
            cmd = [
                sys.executable,
                osp.join(HERE,
                         'bench_train.py'), '--data', 'rawframes', '--seed',
                str(seed), '--epochs',
                str(args.epochs), '--workers',
                str(args.workers), '--threads',
                str(args.threads), '--size',
                str(args.size), '--crop', args.crop, '--tag', tag,
                '--work-dir',
                osp.join('work_dirs', 'sweep', tag)
            ] + (['--schedule', args.schedule]
                 if args.schedule else []) + variants[name]
            with open(osp.join(RESULTS, f'log{tag}.txt'), 'w') as log:
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, seed, name, tag))
        time.sleep(1)
        for item in [r for r in running if r[0].poll() is not None]:
            running.remove(item)
            proc, seed, name, tag = item
            row = dict(variant=name, seed=seed, rc=proc.returncode)
            path = osp.join(RESULTS, f'train_rawframes{tag}.json')
            if proc.returncode == 0 and osp.exists(path):
                with open(path) as f:
                    run = list(json.load(f)['runs'].values())[0]
                row.update(
                    top1=run['top1'],
                    train_s=run['train_time'],
                    vals=[v['top1'] for v in run['vals']])
            results.append(row)
            write_result(out, dict(args=vars(args), runs=results))
            print(f'{time.time() - start:6.0f} s {row}', flush=True)
    print(f'\nmean top-1 over seeds {args.seeds} (wrote {out}):')
    for name in variants:
        top1 = [
            r['top1'] for r in results
            if r.get('variant') == name and 'top1' in r
        ]
        if top1:
            print(f'{name:12s} {100 * sum(top1) / len(top1):5.1f}%  '
                  '(' + ', '.join(f'{100 * t:.1f}' for t in top1) + ')')


if __name__ == '__main__':
    main()
