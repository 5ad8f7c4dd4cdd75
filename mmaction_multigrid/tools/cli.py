"""Command line: ``python -m mmaction_multigrid plan|demo|prepare``.

``plan CONFIG`` prints and plots the multigrid schedule of a config without
building anything. ``demo`` generates a small video set and trains the
shipped demo config through the MMEngine Runner. ``prepare CONFIG --out
DIR`` writes reduced-resolution copies of the train set for the small
shapes, and a config that reads them.
"""
import argparse
import os
import os.path as osp
import sys
import time
from itertools import accumulate
from typing import List, Optional, Sequence

from mmengine.config import Config, DictAction

from ..engine.multigrid_hook import schedule_table
from ..engine.plan import plan_for_samples
from ..schedule.cycles import MultiGridSchedule
from ..schedule.plan import MultiGridPlan
from .config import config_plan, load_config

DEMO_CONFIG = osp.join(
    osp.dirname(osp.dirname(__file__)), 'configs', 'demo_multigrid.py')


def lr_rule_text(plan: MultiGridPlan) -> str:
    """How the LR of a schedule the step rule does not follow is adapted,
    in words.

    Args:
        plan: A plan with ``stock_lr``.

    Returns:
        str: One or two lines for ``plan``.
    """
    schedule = plan.schedule
    stock = ' + '.join(s['type'] for s in plan.stock['param_scheduler'])
    scaling = dict(linear='{}', sqrt='sqrt({})', none='1')[schedule.lr_scaling]
    per_batch = ''
    if schedule.short_cycle and schedule.short_cycle_lr == 'scaled':
        per_batch = (' x ' + scaling.format('k') + ' (k = batch size / base '
                     "shape's batch size, short_cycle_lr='scaled')")
    if not schedule.long_cycle:
        factor = f'{schedule.epoch_factor:g}'
        return (f'lr rule: the stock {stock} (MMEngine), stretched by '
                f'epoch_factor {factor}: epoch e takes the stock LR of epoch '
                f'e / {factor}{per_batch}')
    ends = ', '.join(f'{e:g}' for e in schedule.stock_milestones)
    return (f'lr rule: the stock {stock} (MMEngine) at the equivalent stock '
            f'epoch x {scaling.format("b")} (b = batch multiplier of the '
            f'base shape){per_batch}; long cycles over stock epochs ending '
            f'at {ends}, then fine-tuning to {schedule.stock_max_epochs}')


def plot_plan(plan: MultiGridPlan, base_lr: float, path: str,
              title: str) -> None:
    """Plot clip shape, LR and cumulative compute per epoch, multigrid
    against stock, to a PNG.

    Args:
        plan: The multigrid plan (its stock LR read at 20 points per
            epoch).
        base_lr: The stock base LR.
        path: Output PNG file.
        title: Figure title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    schedule = plan.schedule
    stock_end, end = schedule.stock_max_epochs, schedule.max_epochs
    epochs = list(range(end + 1))
    shapes = [schedule.batch_shapes(min(e, end - 1)) for e in epochs]
    side = 'crop size' if schedule.size[0] == schedule.size[1] else (
        'crop height')

    fig = Figure(figsize=(10, 11), layout='constrained')
    FigureCanvasAgg(fig)
    ax_t, ax_s, ax_lr, ax_c = fig.subplots(
        4, 1, sharex=True, gridspec_kw=dict(height_ratios=(1, 1, 1.4, 1.2)))
    ax_t.step(
        epochs, [s[-1].clip_len for s in shapes],
        where='post',
        color='C0',
        lw=2,
        label='multigrid')
    ax_t.plot([0, stock_end], [schedule.clip_len] * 2,
              '--',
              color='C7',
              label='stock')
    ax_t.set_ylim(0, schedule.clip_len * 1.15)
    ax_t.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_t.set_ylabel('frames per clip')
    ax_s.step(
        epochs, [s[-1].size[0] for s in shapes],
        where='post',
        color='C1',
        lw=2,
        label='multigrid (long cycle)')
    if schedule.short_cycle:
        for i in range(len(shapes[0]) - 1):
            ax_s.step(
                epochs, [s[i].size[0] for s in shapes],
                where='post',
                color='C1',
                lw=1,
                ls=':',
                label='short-cycle iterations' if i == 0 else None)
    ax_s.plot([0, stock_end], [schedule.size[0]] * 2,
              '--',
              color='C7',
              label='stock')
    ax_s.set_ylim(0, schedule.size[0] * 1.15)
    ax_s.set_ylabel(f'{side} (pixels)')

    steps = 20  # samples per epoch: sharp steps, smooth warm-up
    grid = [i / steps for i in range(end * steps + 1)]
    ax_lr.plot(
        grid, [base_lr * plan.epoch_lr_factor(e) for e in grid],
        color='C3',
        lw=2,
        label='multigrid')
    ax_lr.plot(
        [e for e in grid if e <= stock_end],
        [base_lr * plan.stock_lr_factor(e) for e in grid if e <= stock_end],
        '--',
        color='C7',
        label='stock')
    ax_lr.set_yscale('log')
    if plan.stock_lr is not None:
        ax_lr.set_title(lr_rule_text(plan), fontsize=8, wrap=True)
    ax_lr.set_ylabel('learning rate')
    done = list(accumulate(schedule.epoch_compute(e) for e in range(end)))
    ax_c.plot(epochs, [0.0] + done, color='C2', lw=2, label='multigrid')
    ax_c.plot([0, stock_end], [0, stock_end], '--', color='C7', label='stock')
    ax_c.set_ylabel('cumulative compute\n(stock epochs)')
    ax_c.set_xlabel('epoch')
    for ax in (ax_t, ax_s, ax_lr, ax_c):
        ax.legend(loc='upper left' if ax is ax_c else 'lower left', fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_xlim(0, end)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def plan(args: argparse.Namespace) -> int:
    """Print the multigrid schedule of a config and plot it."""
    cfg = load_config(args.config, args.cfg_options)
    plan = config_plan(cfg)
    schedule = plan.schedule
    # The stock LR at 20 iterations per epoch: enough for the table's LRs
    # and a smooth plot.
    plan = plan_for_samples(plan, 20 * schedule.batch_size)
    base_lr = cfg['optim_wrapper']['optimizer']['lr']
    points, factors = schedule.lr_points()
    compute = schedule.compute_ratio()
    name = osp.splitext(osp.basename(args.config))[0]
    if name.endswith('_multigrid'):
        name = name[:-len('_multigrid')]
    print(f'multigrid plan of {args.config} ({schedule.batch_size} clips '
          f'per GPU, base lr {base_lr:.4g}):')
    print(schedule_table(plan, base_lr))
    if plan.stock_lr is None:
        print('lr steps (epoch: lr): ' +
              ', '.join(f'{p}: {base_lr * f:.4g}'
                        for p, f in zip(points, factors)))
    else:
        print(lr_rule_text(plan))
    if plan.stock_lr is None and schedule.warmup_epochs:
        print(f'warm-up: linear from '
              f'{base_lr * schedule.warmup_start_factor:.4g} to '
              f'{base_lr * schedule.lr_factor(schedule.warmup_epochs):.4g} '
              f'over the first {schedule.warmup_epochs} epochs')
    print(f'epochs: {schedule.stock_max_epochs} stock, {schedule.max_epochs} '
          'multigrid')
    print(f'iterations: {schedule.iteration_ratio():.2f}x fewer than the '
          'stock run')
    print(f'compute: {compute:.3f} of the stock run ({1 / compute:.2f}x '
          'less)')
    if 'mmaction_multigrid' not in (cfg.get('custom_imports')
                                    or {}).get('imports', []):
        print('note: the config has no custom_imports of mmaction_multigrid; '
              'tools/train.py would train it the stock way.')
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print('plot: skipped, matplotlib is not installed (pip install '
              '"mmaction-multigrid[plot]" or pip install matplotlib)')
        return 0
    os.makedirs(args.out, exist_ok=True)
    path = osp.join(args.out, f'{name}_multigrid_plan.png')
    plot_plan(plan, base_lr, path,
              f'{name}\nmultigrid: {1 / compute:.2f}x less compute')
    print(f'plot: {path}')
    if args.measure:
        measure_plan(cfg, schedule, args, name)
    return 0


def measure_plan(cfg: Config, schedule: MultiGridSchedule,
                 args: argparse.Namespace, name: str) -> None:
    """Time model and data at every shape, print and plot the prediction."""
    import torch

    from .measure import measure, plot_timeline, report
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    workers = (
        args.workers if args.workers is not None else cfg.train_dataloader.get(
            'num_workers', 0))
    where, threads = device, torch.get_num_threads()
    if device == 'cpu':
        # Training leaves the data workers their cores, as the demo does;
        # compute threads competing with them run many times slower.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
        where = f'cpu ({torch.get_num_threads()} threads)'
    try:
        timings, samples = measure(cfg, args.iters, args.clips, device)
    finally:
        torch.set_num_threads(threads)
    per_gpu = (args.samples or samples) // args.gpus
    text, result = report(schedule, timings, per_gpu, max(1, workers), where)
    print(text)
    path = osp.join(args.out, f'{name}_multigrid_measure.png')
    plot_timeline(
        schedule, result, path,
        f'{name}: predicted {result["stock_s"] / 3600:.2f} h stock,'
        f' {result["multigrid_s"] / 3600:.2f} h multigrid')
    print(f'plot: {path}')


def demo(args: argparse.Namespace) -> int:
    """Generate a small video set and train the demo config on it."""
    import torch
    from mmengine.runner import Runner

    from .synthetic import dataset_cfg, make_dataset

    if args.epochs is not None and args.epochs < 2:
        raise ValueError('--epochs must be at least 2 (the schedule steps '
                         'its learning rate).')
    start = time.time()
    info = make_dataset(
        osp.join(args.work_dir, 'data'), videos_per_class=48, val_per_class=16)
    cfg = load_config(DEMO_CONFIG)
    cfg.work_dir = args.work_dir
    for split, loader in (('train', cfg.train_dataloader),
                          ('val', cfg.val_dataloader), ('val',
                                                        cfg.test_dataloader)):
        loader.dataset = dataset_cfg(info, loader.dataset.pipeline, split)
    if args.epochs is not None:
        scale_epochs(cfg, args.epochs)
    # Leave the data workers their cores: on a small CPU, compute threads
    # that compete with them make training many times slower.
    torch.set_num_threads(
        max(1, (os.cpu_count() or 1) - cfg.train_dataloader.num_workers))
    print(schedule_table(config_plan(cfg), cfg.optim_wrapper.optimizer.lr))
    runner = Runner.from_cfg(cfg)  # a MultiGridRunner: cfg has multi_grid
    runner.train()
    accuracy = runner.message_hub.get_scalar('val/acc/top1').current()
    print(f'demo: final validation top-1 accuracy {accuracy:.3f} (chance '
          f'{1 / info["num_classes"]:.2f}) after {runner.max_epochs} epochs, '
          f'{time.time() - start:.0f} s')
    return 0


def prepare_cmd(args: argparse.Namespace) -> int:
    """Write the prepared copy of a config's train set (or one shard)."""
    from .prepare import ANNOTATION, prepare, rate_text
    report = prepare(args.config, args.out, args.workers, args.quality,
                     args.cfg_options, args.shard)
    for source, error in report['corrupt']:
        print(f'skipped unreadable sample {source}: {error}')
    print(f'prepare: {report["sources"]} sources: {report["written"]} '
          f'written, {report["raced"]} finished first by another process, '
          f'{report["skipped"]} already done, {len(report["corrupt"])} '
          f'unreadable (left out of {ANNOTATION}); copies at short sides '
          f'{report["short_sides"]}')
    print(rate_text(report))
    if report['config'] is None:
        print(f'prepare: shard {args.shard} done. When every shard is done, '
              'run the same command without --shard: it converts what the '
              f'shards left and writes {ANNOTATION} and the config.')
    else:
        print(f'config: {report["config"]}')
    return 0


def scale_epochs(cfg: Config, epochs: int) -> None:
    """Stretch the stock schedule of ``cfg`` (warm-up, steps) to ``epochs``.

    Args:
        cfg: A config with epoch-based ``param_scheduler`` entries.
        epochs: New stock epoch count (multigrid trains ``epoch_factor``
            times as many).
    """
    ratio = epochs / cfg.train_cfg.max_epochs
    cfg.train_cfg.max_epochs = epochs
    for sched in cfg.param_scheduler:
        sched.end = max(1, round(sched.end * ratio))
        if 'milestones' in sched:
            sched.milestones = sorted({
                min(max(1, round(m * ratio)), epochs - 1)
                for m in sched.milestones
            })


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog='python -m mmaction_multigrid',
        description='Multigrid training for MMAction2: plan a schedule, '
        'run the demo, or prepare a train set.')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser(
        'plan',
        help='print and plot the multigrid schedule of a config',
        description='Print the multigrid schedule of CONFIG (stages, clip '
        'shapes, batch sizes, learning rates, estimated compute) and plot '
        'it against the stock schedule.')
    p.add_argument('config', help='config file with `multi_grid`')
    p.add_argument(
        '--out', default='.', help='folder for the PNG plot (default: .)')
    p.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        metavar='KEY=VALUE',
        help='override config settings, as in tools/train.py; '
        '`multi_grid.long_cycle=True` or `multi_grid={}` adds multigrid '
        'with its defaults to a stock config')
    p.add_argument(
        '--measure',
        action='store_true',
        help='time the model at every shape on this device and '
        'the train pipeline on the train set, and predict the '
        'wall-clock of stock vs multigrid')
    p.add_argument(
        '--iters',
        type=int,
        default=3,
        help='--measure: timed iterations per shape (default 3)')
    p.add_argument(
        '--clips',
        type=int,
        default=8,
        help='--measure: clips loaded per shape (default 8)')
    p.add_argument(
        '--workers',
        type=int,
        help='--measure: data workers per GPU (default: '
        'train_dataloader.num_workers)')
    p.add_argument(
        '--gpus',
        type=int,
        default=1,
        help='--measure: GPUs the train set is split over '
        '(default 1)')
    p.add_argument(
        '--samples',
        type=int,
        help='--measure: training clips per epoch to predict for '
        '(default: the train set\'s)')
    p.add_argument(
        '--device',
        help='--measure: torch device (default: '
        'the GPU if there is one)')
    d = sub.add_parser(
        'demo',
        help='train a small model on generated videos',
        description='Generate a small labelled video set and train the '
        'demo config on it with multigrid, through the MMEngine Runner.')
    d.add_argument(
        '--work-dir',
        default=osp.join('work_dirs', 'demo'),
        help='data, logs and checkpoints (default: '
        'work_dirs/demo)')
    d.add_argument(
        '--epochs',
        type=int,
        help='epochs of the stock schedule (multigrid trains 1.5x '
        'as many); default: the config\'s')
    r = sub.add_parser(
        'prepare',
        help='write reduced-resolution copies for small shapes',
        description='Write the train set of CONFIG as JPEG frames at the '
        'reduced short sides its multigrid shapes resize to, and '
        'OUT/<config>.py that trains from them (the default shape still '
        'reads the source). Resumable and idempotent; several processes or '
        'machines may write to the same OUT.')
    r.add_argument('config', help='config file with `multi_grid`')
    r.add_argument('--out', required=True, help='output folder')
    r.add_argument(
        '--workers', type=int, help='processes (default: all cores)')
    r.add_argument(
        '--quality',
        type=int,
        default=90,
        help='JPEG quality of the copies (default: 90)')
    r.add_argument(
        '--shard',
        metavar='I/N',
        help='convert only every N-th distinct source, from number I '
        '(counted from 0; e.g. 0/4 to 3/4 on 4 machines), and write no '
        'list or config; then run once without --shard to write them')
    r.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        metavar='KEY=VALUE',
        help='override config settings, as in tools/train.py')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m mmaction_multigrid`` and
    ``mmaction-multigrid``.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when
            None.

    Returns:
        int: Exit status: 0, or 2 on a config error.
    """
    args = parse_args(argv)
    command = dict(plan=plan, demo=demo, prepare=prepare_cmd)[args.command]
    try:
        return command(args)
    except (ValueError, OSError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
