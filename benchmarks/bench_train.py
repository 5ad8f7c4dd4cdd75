"""End-to-end speedup of multigrid training over the stock stepwise run.

Trains the shipped demo config (an I3D-structured ResNet3d-18, 16 base
channels, 16x1 clips at 64x64) twice on the same generated data set, through
the real MMEngine Runner, side by side in one invocation:

- *stock*: the config without ``custom_imports``/``multi_grid`` (a plain
  MMAction2 stepwise config: ``E`` epochs, milestones at 40% and 80%);
- *multigrid*: the same config with those two entries (``1.5 E`` epochs).

Training time excludes validation (a hook sums the wall-clock time of the
train epochs only). Per run it prints the time, clips per second, the
data-loading share (``data_time / time`` of MMEngine's ``IterTimerHook``) per
long-cycle stage, and the final validation top-1; then the speedup against
the schedule's compute ceiling (``1 / compute_ratio``). Per-iteration
time/loss and per-validation accuracy go to
``work_dirs/benchmarks/train_<data>.json``; a run without ``--tag`` (or
``--plot-only``) draws ``work_dirs/benchmarks/train_curves.png`` from them.

    python benchmarks/bench_train.py      # docs/benchmarks.md's table, seed 0
    python benchmarks/bench_train.py --seed 1 --tag _seed1
    python benchmarks/bench_train.py --plot-only
    python benchmarks/bench_train.py --data rawframes --schedule cosine \
        --tag _cosine

``--schedule cosine`` replaces the step schedule by the default SlowFast /
SlowOnly R50 recipe's form: a ``LinearLR`` warm-up over the first tenth
(per iteration) under a ``CosineAnnealingLR`` over all ``E`` epochs
(``eta_min=0``, per epoch). ``--optimizer adamw`` trains with AdamW (the
Video Swin / MViT optimizer) instead of the demo's SGD. ``--size S`` trains
at ``S``-pixel crops instead of 64 and ``--crop rrc`` with the cosine R50
recipes' ``RandomResizedCrop`` (docs/benchmarks.md, "Why 30 epochs lose 7
points and 60 epochs do not").
"""
import argparse
import ast
import copy
import json
import os
import os.path as osp
import sys
import time

import torch
from mmaction.registry import HOOKS
from mmengine.hooks import Hook

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, osp.dirname(HERE))

from mmaction_multigrid import MultiGridSchedule
from mmaction_multigrid.tools.cli import DEMO_CONFIG, config_plan, load_config
from mmaction_multigrid.tools.synthetic import dataset_cfg, make_dataset

RESULTS = osp.join(osp.dirname(HERE), 'work_dirs', 'benchmarks')


@HOOKS.register_module(force=True)
class TrainTimeRecorder(Hook):
    """Records train-epoch wall-clock time (validation excluded) and, per
    iteration, time, data time, loss and clips; per validation, top-1."""

    priority = 'LOWEST'  # after IterTimerHook has updated the hub

    def __init__(self) -> None:
        self.iters, self.epochs, self.vals = [], [], []
        self.train_time = 0.0
        self._t0 = None

    def before_train_epoch(self, runner) -> None:
        self._t0 = time.perf_counter()

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None) -> None:
        hub = runner.message_hub
        loss = outputs.get('loss') if outputs else None
        self.iters.append(
            dict(
                epoch=runner.epoch,
                iter=runner.iter,
                t=self.train_time + time.perf_counter() - self._t0,
                time=float(hub.get_scalar('train/time').current()),
                data_time=float(hub.get_scalar('train/data_time').current()),
                loss=float(loss.detach()) if loss is not None else None,
                clips=len(data_batch['inputs']),
                shape=list(data_batch['inputs'][0].shape[-3:])))

    def after_train_epoch(self, runner) -> None:
        dt = time.perf_counter() - self._t0
        self.train_time += dt
        self.epochs.append(dict(epoch=runner.epoch, time=dt))

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.vals.append(
            dict(
                epoch=runner.epoch,
                t=self.train_time,
                top1=float((metrics or {}).get('acc/top1', float('nan')))))


def scaled_step(step: dict, size: int) -> dict:
    """A demo pipeline step for ``size``-pixel crops instead of 64 (the
    short side resized to ``72 / 64`` of the crop, as the demo)."""
    step = dict(step)
    if step['type'] == 'Resize':
        step['scale'] = ((-1,
                          round(size * 72 / 64)) if step['scale'][0] == -1 else
                         (size, size))
    elif step['type'] == 'MultiScaleCrop':
        step['input_size'] = size
    elif step['type'] == 'CenterCrop':
        step['crop_size'] = size
    return step


def build_cfg(info: dict, args, multigrid: bool, work_dir: str):
    """The demo config as a stock (or multigrid) config on ``info``."""
    cfg = load_config(DEMO_CONFIG)
    if not multigrid:  # the two-line change, undone
        cfg.pop('multi_grid')
        cfg.pop('custom_imports')
    else:
        if args.precise_bn:
            cfg.multi_grid.precise_bn = dict(num_iters=args.precise_bn)
        cfg.multi_grid.update(args.multi_grid)
    cfg.work_dir = work_dir
    if multigrid and args.size != 64:
        cfg.multi_grid.default_s = (args.size, args.size)
    for split, loader in (('train', cfg.train_dataloader),
                          ('val', cfg.val_dataloader), ('val',
                                                        cfg.test_dataloader)):
        pipeline = loader.dataset.pipeline
        if info['fmt'] == 'rawframes':
            pipeline = [
                dict(type='RawFrameDecode')
                if t['type'] == 'DecordDecode' else t for t in pipeline
                if t['type'] != 'DecordInit'
            ]
        if args.size != 64:
            pipeline = [scaled_step(t, args.size) for t in pipeline]
        if args.crop == 'rrc':  # as the SlowFast / SlowOnly R50 256e recipes
            pipeline = [
                dict(type='RandomResizedCrop')
                if t['type'] == 'MultiScaleCrop' else t for t in pipeline
            ]
        loader.dataset = dataset_cfg(info, pipeline, split)
        loader.num_workers = args.workers
        loader.persistent_workers = args.workers > 0
    epochs = args.epochs
    milestones = [round(0.4 * epochs), round(0.8 * epochs)]
    cfg.train_cfg.max_epochs = epochs
    warmup = dict(
        type='LinearLR',
        start_factor=0.1,
        by_epoch=True,
        begin=0,
        end=max(1, epochs // 10),
        convert_to_iter_based=True)
    if args.schedule == 'cosine':
        milestones = []
        cfg.param_scheduler = [
            warmup,
            dict(
                type='CosineAnnealingLR',
                T_max=epochs,
                eta_min=0,
                by_epoch=True,
                begin=0,
                end=epochs)
        ]
    else:
        cfg.param_scheduler = [
            warmup,
            dict(
                type='MultiStepLR',
                begin=0,
                end=epochs,
                by_epoch=True,
                milestones=milestones,
                gamma=0.1)
        ]
    if args.optimizer == 'adamw':
        cfg.optim_wrapper.optimizer = dict(
            type='AdamW',
            lr=args.lr or 1e-3,
            betas=(0.9, 0.999),
            weight_decay=0.05)
    elif args.lr:
        cfg.optim_wrapper.optimizer.lr = args.lr
    # ~5 validations per run (plus the last epoch), excluded from the time.
    span = epochs * (1.5 if multigrid else 1)
    cfg.train_cfg.val_interval = max(1, int(round(span / 5)))
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=10**6, save_last=False)
    cfg.default_hooks.logger.interval = 50
    cfg.custom_hooks = [dict(type='TrainTimeRecorder')]
    cfg.randomness = dict(seed=args.seed)
    return cfg, milestones


def stages_of(run: dict, schedule: MultiGridSchedule, multigrid: bool):
    """Per long-cycle stage (multigrid) or LR stage (stock) aggregates."""
    rows = {}
    for it in run['iters']:
        if multigrid:
            key = schedule.stage_index(it['epoch'])
        else:
            key = sum(it['epoch'] >= m for m in schedule.stock_milestones)
        row = rows.setdefault(
            key,
            dict(
                stage=key,
                iters=0,
                clips=0,
                time=0.0,
                data=0.0,
                shapes=set(),
                epochs=set()))
        row['iters'] += 1
        row['clips'] += it['clips']
        row['time'] += it['time']
        row['data'] += it['data_time']
        row['shapes'].add(tuple(it['shape']))
        row['epochs'].add(it['epoch'])
    return [rows[k] for k in sorted(rows)]


def run_one(info: dict, args, multigrid: bool, fmt: str) -> dict:
    from mmengine.runner import Runner
    name = 'multigrid' if multigrid else 'stock'
    work_dir = osp.join(args.work_dir, fmt, name)
    cfg, milestones = build_cfg(info, args, multigrid, work_dir)
    torch.manual_seed(args.seed)
    runner = Runner.from_cfg(copy.deepcopy(cfg))
    recorder = [h for h in runner.hooks if isinstance(h, TrainTimeRecorder)][0]
    start = time.perf_counter()
    runner.train()
    total = time.perf_counter() - start
    return dict(
        name=name,
        fmt=fmt,
        epochs=runner.max_epochs,
        milestones=milestones,
        train_time=recorder.train_time,
        total_time=total,
        iters=recorder.iters,
        epoch_times=recorder.epochs,
        vals=recorder.vals,
        top1=recorder.vals[-1]['top1'] if recorder.vals else None)


def report(fmt: str, runs: dict, schedule: MultiGridSchedule) -> str:
    out = [
        f'\n=== data={fmt}: stock {schedule.stock_max_epochs} epochs '
        f'{schedule.stock_milestones if schedule.step_rule else "cosine"}'
        f' vs multigrid '
        f'{schedule.max_epochs} epochs ===',
        '| run | epochs | iters | clips | train time (s) | clips/s | '
        'data share | val top-1 |', '|---|---|---|---|---|---|---|---|'
    ]
    for name in ('stock', 'multigrid'):
        r = runs[name]
        clips = sum(i['clips'] for i in r['iters'])
        t = sum(i['time'] for i in r['iters'])
        d = sum(i['data_time'] for i in r['iters'])
        out.append(f'| {name} | {r["epochs"]} | {len(r["iters"])} | {clips} '
                   f'| {r["train_time"]:.1f} | {clips / r["train_time"]:.1f}'
                   f' | {d / t:.0%} | {r["top1"]:.3f} |')
    speedup = runs['stock']['train_time'] / runs['multigrid']['train_time']
    ceiling = 1 / schedule.compute_ratio()
    out.append(f'\nspeedup (train time, validation excluded): '
               f'{speedup:.2f}x; schedule compute ceiling {ceiling:.2f}x '
               f'({speedup / ceiling:.0%} of it); val top-1 stock '
               f'{runs["stock"]["top1"]:.3f} vs multigrid '
               f'{runs["multigrid"]["top1"]:.3f}')
    for name in ('stock', 'multigrid'):
        out += [
            f'\nper-stage breakdown, {name} ('
            f'{"long-cycle stage" if name == "multigrid" else "LR stage"}'
            '):',
            '| stage | epochs | iters | shapes (T,H,W) | clips | time (s)'
            ' | s/iter | data s/iter | compute s/iter | data share '
            '| clips/s |', '|---|---|---|---|---|---|---|---|---|---|---|'
        ]
        for row in stages_of(runs[name], schedule, name == 'multigrid'):
            n = row['iters']
            ep = sorted(row['epochs'])
            shapes = ' '.join('x'.join(map(str, s))
                              for s in sorted(row['shapes']))
            out.append(
                f'| {row["stage"]} | {ep[0]}-{ep[-1]} | {n} | {shapes} | '
                f'{row["clips"]} | {row["time"]:.1f} | {row["time"] / n:.3f}'
                f' | {row["data"] / n:.3f} | '
                f'{(row["time"] - row["data"]) / n:.3f} | '
                f'{row["data"] / row["time"]:.0%} | '
                f'{row["clips"] / row["time"]:.1f} |')
    return '\n'.join(out)


def plot(paths, out: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    runs = [json.load(open(p)) for p in paths]
    fig, axes = plt.subplots(
        2, len(runs), figsize=(6 * len(runs), 7), squeeze=False)
    colours = dict(stock='tab:blue', multigrid='tab:red')
    for col, data in enumerate(runs):
        for name in ('stock', 'multigrid'):
            r = data['runs'][name]
            t = [i['t'] for i in r['iters']]
            loss = [i['loss'] for i in r['iters']]
            k = max(1, len(loss) // 100)  # running mean for readability
            smooth = [
                sum(loss[max(0, j - k):j + 1]) / len(loss[max(0, j - k):j + 1])
                for j in range(len(loss))
            ]
            label = (f'{name} ({r["epochs"]} ep, '
                     f'{r["train_time"]:.0f} s)')
            axes[0, col].plot(t, smooth, color=colours[name], label=label)
            axes[1, col].plot([v['t'] for v in r['vals']],
                              [100 * v['top1'] for v in r['vals']],
                              'o-',
                              color=colours[name],
                              label=label)
        axes[0, col].set_title(f'data={data["fmt"]}: training loss')
        axes[1, col].set_title(f'data={data["fmt"]}: validation top-1')
        axes[1, col].set_ylabel('top-1 (%)')
        axes[1, col].set_ylim(0, 105)
        axes[1, col].axhline(25, color='grey', ls=':', lw=1)
        axes[0, col].set_ylabel('loss (running mean)')
        for ax in axes[:, col]:
            ax.set_xlabel('training wall-clock (s, validation excluded)')
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle('Stock vs multigrid, demo I3D-like ResNet3d-18, ' +
                 runs[0].get('hardware', '2-core CPU'))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f'wrote {out}')


def hardware() -> str:
    """The machine the runs trained on, in words."""
    cores = f'{os.cpu_count()}-core CPU'
    if torch.cuda.is_available():
        return f'{torch.cuda.get_device_name()}, {cores}'
    return cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--data',
        nargs='+',
        default=['video', 'rawframes'],
        choices=['video', 'rawframes'])
    parser.add_argument(
        '--epochs',
        type=int,
        default=30,
        help='stock epochs E; milestones at 0.4E and 0.8E, '
        'multigrid trains 1.5E')
    parser.add_argument('--videos-per-class', type=int, default=64)
    parser.add_argument('--val-per-class', type=int, default=32)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument(
        '--size',
        type=int,
        default=64,
        help='crop size (multi_grid.default_s); frames are generated at '
        '1.5x / 2x of it')
    parser.add_argument(
        '--crop',
        choices=['demo', 'rrc'],
        default='demo',
        help='train crop: the demo config\'s MultiScaleCrop (scales 1, '
        '0.8) or RandomResizedCrop (area 0.08-1), as the cosine SlowFast '
        'and SlowOnly R50 recipes')
    parser.add_argument(
        '--threads',
        type=int,
        default=None,
        help='torch threads (default: cores - workers, '
        'at least 1, as the demo does)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--schedule',
        choices=['step', 'cosine'],
        default='step',
        help='stock LR schedule: step (milestones at 0.4E '
        'and 0.8E) or cosine (over E), both after a linear '
        'warm-up over E/10')
    parser.add_argument(
        '--optimizer',
        choices=['sgd', 'adamw'],
        default='sgd',
        help='sgd: the demo config\'s; adamw: lr 1e-3, '
        'weight decay 0.05, as Video Swin')
    parser.add_argument(
        '--lr',
        type=float,
        default=None,
        help='base LR (default: the config\'s, 1e-3 for '
        'adamw)')
    parser.add_argument('--only', choices=['stock', 'multigrid'])
    parser.add_argument(
        '--precise-bn',
        type=int,
        default=0,
        help='multigrid run: multi_grid.precise_bn num_iters')
    parser.add_argument(
        '--multi-grid',
        nargs='+',
        default=[],
        metavar='KEY=VALUE',
        help='multigrid run: extra multi_grid entries '
        '(Python literals), e.g. bn_base_size=None')
    parser.add_argument(
        '--tag',
        default='',
        help='suffix of the JSON file names, to keep '
        'variants apart (no plot is drawn with a tag)')
    parser.add_argument('--work-dir', default='work_dirs/bench_train')
    parser.add_argument('--plot-only', action='store_true')
    args = parser.parse_args()
    args.multi_grid = {
        key: ast.literal_eval(value)
        for key, value in (item.split('=', 1) for item in args.multi_grid)
    }
    os.makedirs(RESULTS, exist_ok=True)
    png = osp.join(RESULTS, 'train_curves.png')
    if args.plot_only:
        plot([
            osp.join(RESULTS, f'train_{f}.json') for f in args.data
            if osp.exists(osp.join(RESULTS, f'train_{f}.json'))
        ], png)
        return
    os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    torch.set_flush_denormal(True)
    threads = args.threads or max(1, (os.cpu_count() or 1) - args.workers)
    torch.set_num_threads(threads)
    print(f'{hardware()}: torch threads {threads}, num_workers '
          f'{args.workers}, seed {args.seed}, load average {os.getloadavg()}')
    written = []
    for fmt in args.data:
        t0 = time.perf_counter()
        info = make_dataset(
            osp.join(
                args.work_dir,
                f'data_{fmt}' + ('' if args.size == 64 else f'_{args.size}')),
            videos_per_class=args.videos_per_class,
            size=(round(args.size * 1.5), args.size * 2),
            val_per_class=args.val_per_class,
            fmt=fmt,
            seed=args.seed)
        print(f'[{fmt}] generated data in {time.perf_counter() - t0:.0f} s')
        runs = {}
        for name in ('stock', 'multigrid'):
            if args.only and name != args.only:
                continue
            runs[name] = run_one(info, args, name == 'multigrid', fmt)
            print(
                f'[{fmt}] {name}: train {runs[name]["train_time"]:.1f} s,'
                f' top-1 {runs[name]["top1"]:.3f}, load '
                f'{os.getloadavg()}',
                flush=True)
        cfg, _ = build_cfg(info, args, True, '')
        schedule = config_plan(cfg).schedule
        if len(runs) == 2:
            text = report(fmt, runs, schedule)
            print(text, flush=True)
        path = osp.join(RESULTS, f'train_{fmt}{args.tag}.json')
        with open(path, 'w') as f:
            json.dump(
                dict(
                    fmt=fmt,
                    hardware=hardware(),
                    epochs=args.epochs,
                    schedule=args.schedule,
                    optimizer=args.optimizer,
                    lr=args.lr,
                    workers=args.workers,
                    size=args.size,
                    crop=args.crop,
                    threads=threads,
                    seed=args.seed,
                    multi_grid=args.multi_grid,
                    config_multi_grid=cfg.multi_grid.to_dict(),
                    ceiling=1 / schedule.compute_ratio(),
                    load=os.getloadavg(),
                    runs=runs), f)
        written.append(path)
    if not args.tag and all(
            len(json.load(open(p))['runs']) == 2 for p in written):
        plot(written, png)


if __name__ == '__main__':
    main()
