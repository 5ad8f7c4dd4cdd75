"""Start-up cost of a multigrid Runner against the stock one: the seconds
from ``Runner.from_cfg`` to the first training iteration, phase by phase.

Builds the stock I3D R50 config of the installed MMAction2 (no pretrained
weights) on a generated annotation file of ``--samples`` lines that list
``--videos`` real mp4 videos over and over (cv2, fourcc ``mp4v``; or,
with ``--codec h264``, libx264 through PyAV with Kinetics' keyframe
spacing, which makes each clip's decoding cost more),
once as it is (``stock``) and once with the two-line change
(``custom_imports`` and ``multi_grid=dict()``). Each build runs in a fresh
Python process (imports, CUDA context and data workers are paid by each, as
by ``tools/train.py``) and calls ``runner.train()``; a hook stops it at the
first ``before_train_iter``. On the way it times every phase separately:
the config conversion, ``Runner.from_cfg`` and its model build, model
wrapping (the move to CUDA when CUDA is available, as MMEngine does) and
config dump, then in ``train()`` the train loop (dataset, sampler, loader),
the optimizer wrapper, the LR schedulers, the validation loop, the
``before_run`` hooks, weight init, each hook's ``before_train`` (the
multigrid model check), ``before_train_epoch``, the start of the loader
iterator (workers) and the wait for the first batch.

    python benchmarks/bench_startup.py --device cpu [--samples 100]
    python benchmarks/bench_startup.py --device cuda --samples 5000 \\
        --out startup.json
    python benchmarks/bench_startup.py --profile   # + cProfile, multigrid

Prints one table (phase, stock s, multigrid s, difference); ``--out``
writes it as JSON with the command, date, host, versions and git commit.
``--profile`` also prints the top 25 cumulative entries of a cProfile of
the multigrid build (the main process only: the data workers' time shows
as the wait for the first batch).
"""
import argparse
import contextlib
import cProfile
import functools
import io
import json
import os
import os.path as osp
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, osp.dirname(HERE))

I3D_CONFIG = osp.join(
    'configs', 'recognition', 'i3d',
    'i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_'
    'kinetics400-rgb.py')
KINDS = ('stock', 'multigrid')
# (key, label); rows indented with two spaces are part of the row above.
PHASES = [
    ('import', 'import mmaction_multigrid (custom_imports)'),
    ('convert_config', 'convert_config'),
    ('from_cfg', 'Runner.from_cfg'),
    ('build_model', '  build_model'),
    ('wrap_model', '  wrap_model (to the device)'),
    ('register_hooks', '  register_hooks'),
    ('dump_config', '  dump_config'),
    ('build_train_loop', 'train loop (dataset, sampler, loader)'),
    ('build_optim_wrapper', 'build_optim_wrapper'),
    ('build_param_scheduler', 'build_param_scheduler'),
    ('build_val_loop', 'build_val_loop'),
    ('before_run', 'before_run hooks'),
    ('_init_model_weights', 'init weights'),
    ('load_or_resume', 'load_or_resume'),
    ('before_train', 'before_train hooks'),
    # one row per hook with a before_train is added after this one
    ('before_train_epoch', 'before_train_epoch hooks'),
    ('loader_iter', 'iter(train loader) (workers start)'),
    ('first_batch', 'first batch (wait)'),
    ('ready', 'total: from_cfg to first iteration'),
]
# Runner methods timed as phases (inclusive of what they call).
RUNNER_METHODS = ('build_model', 'wrap_model', 'register_hooks', 'dump_config',
                  'build_train_loop', 'build_optim_wrapper',
                  'build_param_scheduler', 'build_val_loop',
                  '_init_model_weights', 'load_or_resume')
TIMED_HOOK_POINTS = ('before_run', 'before_train', 'before_train_epoch')


# ------------------------------------------------------------------ data --
def _write_h264(path: str, frames, fps: int = 25) -> None:
    """Frames to an mp4 through PyAV's libx264 at its defaults (a keyframe
    every 250 frames, as in Kinetics' videos)."""
    import av
    frames = iter(frames)
    first = next(frames)
    with av.open(path, 'w') as container:
        stream = container.add_stream('libx264', rate=fps)
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = 'yuv420p'
        for frame in [first, *frames]:
            container.mux(
                stream.encode(
                    av.VideoFrame.from_ndarray(frame, format='bgr24')))
        container.mux(stream.encode())


def make_data(root: str, videos: int, frames: int, size, samples: int,
              codec: str) -> dict:
    """Write ``videos`` mp4 videos once (kept for later runs) and an
    annotation file of ``samples`` lines listing them over and over."""
    from mmaction_multigrid import synthetic
    root = osp.join(root, f'{codec}_{videos}_{frames}_{size[0]}x{size[1]}')
    stamp = osp.join(root, 'done')
    if not osp.isfile(stamp):
        with contextlib.ExitStack() as stack:
            if codec == 'h264':  # the same clips, re-encoded
                os.makedirs(osp.join(root, 'videos', 'train'), exist_ok=True)
                os.makedirs(osp.join(root, 'videos', 'val'), exist_ok=True)
                stack.enter_context(
                    patched(
                        synthetic, '_write_video',
                        lambda path, frames, size: _write_h264(path, frames)))
            # else cv2.VideoWriter, fourcc mp4v
            synthetic.make_dataset(
                root,
                num_classes=4,
                videos_per_class=-(-videos // 4),
                num_frames=frames,
                size=tuple(size),
                val_per_class=1)
        open(stamp, 'w').close()
    with open(osp.join(root, 'train_list.txt')) as f:
        lines = [line for line in f.read().splitlines() if line][:videos]
    ann = osp.join(root, f'train_{samples}.txt')
    with open(ann, 'w') as f:
        f.write(''.join(lines[k % len(lines)] + '\n' for k in range(samples)))
    return dict(
        train_ann=ann,
        val_ann=osp.join(root, 'val_list.txt'),
        prefix=osp.join(root, 'videos'))


def build_config(kind: str, data: dict, work_dir: str, workers: Optional[int]):
    """The stock I3D R50 config on ``data``; with the two-line change for
    ``kind == 'multigrid'``."""
    import mmaction
    from mmengine.config import Config
    cfg = Config.fromfile(
        osp.join(osp.dirname(mmaction.__file__), '.mim', I3D_CONFIG))
    cfg.model.backbone.pretrained = None
    cfg.model.backbone.pretrained2d = False
    for split, ann in (('train', data['train_ann']), ('val', data['val_ann']),
                       ('test', data['val_ann'])):
        loader = cfg[f'{split}_dataloader']
        loader.dataset.ann_file = ann
        loader.dataset.data_prefix = dict(video=data['prefix'])
        if workers is not None:
            loader.num_workers = workers
            loader.persistent_workers = workers > 0
    cfg.work_dir = work_dir
    if kind == 'multigrid':
        cfg.custom_imports = dict(
            imports=['mmaction_multigrid'], allow_failed_imports=False)
        cfg.multi_grid = dict()
    return cfg


# ---------------------------------------------------------- one build --
class _FirstIteration(Exception):
    """Raised by the recorder hook at the first ``before_train_iter``."""


class Timer:
    """Inclusive seconds per phase (first call only), synchronised with
    CUDA at both ends so that asynchronous kernels stay in their phase."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.seconds: Dict[str, float] = {}

    def now(self) -> float:
        if self.cuda:
            import torch
            torch.cuda.synchronize()
        return time.perf_counter()

    def record(self, key: str, seconds: float) -> None:
        self.seconds.setdefault(key, seconds)

    def wrap(self, key: str, fn: Callable) -> Callable:

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.record(key, self.now() - start)

        return timed


@contextlib.contextmanager
def patched(owner, name: str, value):
    """Set ``owner.name`` to ``value`` for the block (benchmark
    instrumentation only)."""
    had = name in vars(owner)
    old = vars(owner).get(name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if had:
            setattr(owner, name, old)
        else:
            delattr(owner, name)


def _shut_down_workers(runner) -> None:
    """Stop the train loader's worker processes now (persistent workers
    would otherwise live on to the end of the process)."""
    loop = runner.train_loop
    iterators = [getattr(loop.dataloader, '_iterator', None)]
    iterators.append(getattr(loop, '_batches', None))
    for iterator in iterators:
        if hasattr(iterator, '_shutdown_workers'):
            iterator._shutdown_workers()


def run_one(kind: str, cfg_args: dict, profile: bool) -> dict:
    """Build ``kind``'s Runner and run ``train()`` to the first iteration,
    timing each phase."""
    import torch
    from mmaction.utils import register_all_modules
    from mmengine.hooks import Hook
    from mmengine.runner import Runner
    from torch.utils.data import DataLoader

    # MMAction2's modules, which both Runners import (the stock one from
    # its registries, later), are not counted for the plugin.
    register_all_modules(init_default_scope=False)
    cuda = torch.cuda.is_available()
    timer = Timer(cuda)
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    start = timer.now()
    if kind == 'multigrid':
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(['mmaction_multigrid'])
        timer.record('import', timer.now() - start)
    cfg = build_config(kind, **cfg_args)

    class Recorder(Hook):
        priority = 'HIGHEST'

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            timer.record('first_iter_at', timer.now() - start)
            raise _FirstIteration

    with contextlib.ExitStack() as stack:
        cls = Runner
        if kind == 'multigrid':
            import mmaction_multigrid.engine.runner as mg_runner
            cls = mg_runner.MultiGridRunner
            stack.enter_context(
                patched(mg_runner, 'convert_config',
                        timer.wrap('convert_config',
                                   mg_runner.convert_config)))
        for name in RUNNER_METHODS:
            stack.enter_context(
                patched(cls, name, timer.wrap(name, getattr(cls, name))))
        stock_call_hook = cls.call_hook

        def call_hook(runner, fn_name, **kwargs):
            if fn_name not in TIMED_HOOK_POINTS:
                return stock_call_hook(runner, fn_name, **kwargs)
            return timer.wrap(fn_name, stock_call_hook)(runner, fn_name,
                                                        **kwargs)

        stack.enter_context(patched(cls, 'call_hook', call_hook))
        stock_iter = DataLoader.__iter__

        def loader_iter(loader):
            iterator = timer.wrap('loader_iter', stock_iter)(loader)
            timer.record('loader_iter_at', timer.now() - start)
            return iterator

        stack.enter_context(patched(DataLoader, '__iter__', loader_iter))

        from_cfg_start = timer.now()
        runner = Runner.from_cfg(cfg)
        timer.record('from_cfg', timer.now() - from_cfg_start)
        runner.register_hook(Recorder())
        hook_names = []
        for hook in runner.hooks:
            if type(hook).before_train is not Hook.before_train:
                name = type(hook).__name__
                hook_names.append(name)
                hook.before_train = timer.wrap(f'before_train:{name}',
                                               hook.before_train)
        try:
            runner.train()
        except _FirstIteration:
            pass
        finally:
            if profiler:
                profiler.disable()
            _shut_down_workers(runner)
    seconds = dict(timer.seconds)
    first_iter_at = seconds.pop('first_iter_at')
    seconds['first_batch'] = first_iter_at - seconds.pop('loader_iter_at')
    seconds['ready'] = seconds.get('import', 0.0) + first_iter_at - (
        from_cfg_start - start)
    result = dict(
        kind=kind,
        runner=type(runner).__name__,
        device=str(next(runner.model.parameters()).device),
        hooks_with_before_train=hook_names,
        seconds=seconds)
    if profiler:
        stream = io.StringIO()
        pstats.Stats(
            profiler, stream=stream).sort_stats('cumulative').print_stats(25)
        result['profile'] = stream.getvalue()
    return result


# ---------------------------------------------------------------- driver --
def _child(args) -> None:
    """One build in this process; the result goes to ``args.result``."""
    result = run_one(args.child, json.loads(args.child_args), args.profile)
    with open(args.result, 'w') as f:
        json.dump(result, f)


def spawn(kind: str,
          args,
          cfg_args: dict,
          root: str,
          index,
          profile: bool = False) -> dict:
    """Run one build in a fresh process (under cProfile with ``profile``);
    its log goes to ``root``."""
    env = dict(os.environ)
    if args.device == 'cpu':
        env['CUDA_VISIBLE_DEVICES'] = ''
    result = osp.join(root, f'{kind}_{index}.json')
    log = osp.join(root, f'{kind}_{index}.log')
    command = [
        sys.executable,
        osp.abspath(__file__), '--child', kind, '--child-args',
        json.dumps(cfg_args), '--result', result, '--device', args.device
    ] + (['--profile'] if profile else [])
    with open(log, 'w') as f:
        done = subprocess.run(
            command, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        with open(log) as f:
            sys.stderr.write(f.read()[-6000:])
        raise SystemExit(f'{kind} build failed (log: {log})')
    with open(result) as f:
        return json.load(f)


def rows(results: Dict[str, List[dict]]) -> List[dict]:
    """Median seconds per phase and kind, in the order of :data:`PHASES`
    (one extra row per hook's ``before_train``)."""
    keys = []
    for key, label in PHASES:
        keys.append((key, label))
        if key == 'before_train':
            hooks = []
            for runs in results.values():
                for name in runs[0]['hooks_with_before_train']:
                    if name not in hooks:
                        hooks.append(name)
            keys += [(f'before_train:{h}', f'  {h}') for h in hooks]
    table = []
    for key, label in keys:
        row = dict(phase=label, key=key)
        for kind in KINDS:
            values = [r['seconds'].get(key, 0.0) for r in results[kind]]
            row[kind] = statistics.median(values)
        row['difference'] = row['multigrid'] - row['stock']
        table.append(row)
    return table


def print_table(table: List[dict]) -> None:
    width = max(len(r['phase']) for r in table)
    print(f'{"phase":<{width}}  {"stock s":>8}  {"multigrid s":>11}  '
          f'{"difference":>10}')
    for r in table:
        print(f'{r["phase"]:<{width}}  {r["stock"]:>8.2f}  '
              f'{r["multigrid"]:>11.2f}  {r["difference"]:>+10.2f}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument(
        '--samples', type=int, default=100, help='annotation lines')
    parser.add_argument(
        '--videos', type=int, default=8, help='distinct video files')
    parser.add_argument(
        '--frames', type=int, default=250, help='frames per video (25 fps)')
    parser.add_argument(
        '--size',
        type=int,
        nargs=2,
        default=(256, 340),
        help='video height and width')
    parser.add_argument(
        '--codec',
        choices=('mp4v', 'h264'),
        default='mp4v',
        help='mp4v: cv2.VideoWriter; h264: PyAV libx264 (keyframes 250 '
        'frames apart, as in Kinetics)')
    parser.add_argument(
        '--workers',
        type=int,
        default=None,
        help='data workers per loader (default: the config\'s)')
    parser.add_argument(
        '--repeats',
        type=int,
        default=1,
        help='builds of each kind, alternated; medians')
    parser.add_argument(
        '--data-dir',
        default=osp.join(tempfile.gettempdir(), 'bench_startup_data'))
    parser.add_argument(
        '--work-dir',
        default=None,
        help='logs and work dirs (default: a temp dir)')
    parser.add_argument(
        '--profile', action='store_true', help='cProfile the multigrid build')
    parser.add_argument('--out', help='result JSON')
    parser.add_argument('--child', choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument('--child-args', help=argparse.SUPPRESS)
    parser.add_argument('--result', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    if args.device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            raise SystemExit('--device cuda: CUDA is not available')
    root = args.work_dir or tempfile.mkdtemp(prefix='bench_startup_')
    os.makedirs(root, exist_ok=True)
    start = time.perf_counter()
    data = make_data(args.data_dir, args.videos, args.frames, args.size,
                     args.samples, args.codec)
    print(
        f'data: {args.samples} lines over {args.videos} {args.codec} '
        f'videos of '
        f'{args.frames} frames {args.size[0]}x{args.size[1]} '
        f'({time.perf_counter() - start:.1f} s); logs in {root}',
        flush=True)
    results: Dict[str, List[dict]] = {kind: [] for kind in KINDS}
    for index in range(args.repeats):
        for kind in KINDS:
            cfg_args = dict(
                data=data,
                work_dir=osp.join(root, f'{kind}_{index}'),
                workers=args.workers)
            results[kind].append(spawn(kind, args, cfg_args, root, index))
            print(
                f'{kind} #{index}: ready in '
                f'{results[kind][-1]["seconds"]["ready"]:.2f} s on '
                f'{results[kind][-1]["device"]}',
                flush=True)
    table = rows(results)
    print()
    print_table(table)
    profile = None
    if args.profile:  # an extra run: the profiler slows what it measures
        cfg_args = dict(
            data=data,
            work_dir=osp.join(root, 'multigrid_profile'),
            workers=args.workers)
        profile = spawn('multigrid', args, cfg_args, root, 'profile',
                        True)['profile']
        print('\ncProfile of the multigrid build (main process), top 25 '
              'cumulative:')
        print(profile)
    if args.out:
        from result_json import write_result
        write_result(
            args.out,
            dict(
                figure='seconds from Runner.from_cfg to the first training '
                'iteration, per phase (medians)',
                device=args.device,
                samples=args.samples,
                videos=args.videos,
                codec=args.codec,
                frames=args.frames,
                size=list(args.size),
                workers=args.workers,
                repeats=args.repeats,
                table=table,
                runs=results,
                profile=profile))


if __name__ == '__main__':
    main()
