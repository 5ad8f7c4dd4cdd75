"""Validate ``multi_grid`` and rewrite a stock config for multigrid training.

:func:`convert_config` is a pure function on config dicts: it returns a new
config whose train dataloader, LR schedule, epochs and hooks implement the
multigrid schedule, and leaves the input untouched.
"""
import copy
import math
import numbers
from typing import List, Optional, Tuple

from mmengine.logging import print_log

from ..datasets.pipeline import (absorb_format, check_format, clip_params,
                                 output_size)
from ..schedule.cycles import (DEFAULT_LONG_CYCLE_FACTORS,
                               DEFAULT_SHORT_CYCLE_FACTORS, SHORT_CYCLE_LRS,
                               MultiGridSchedule)
from ..schedule.lr_rules import LR_SCALINGS, is_step_schedule, scheduler_terms

DEFAULTS = dict(
    long_cycle=True,
    short_cycle=True,
    long_cycle_factors=DEFAULT_LONG_CYCLE_FACTORS,
    short_cycle_factors=DEFAULT_SHORT_CYCLE_FACTORS,
    epoch_factor=1.5,
    default_s=None,
    bn_base_size='auto',
    precise_bn=None,
    temporal_sampling='span',
    reduced_decode=True,
    prepared_copy=None,
    lr_scaling='linear',
    num_long_cycles=2,
    fine_tune_share=0.2,
    short_cycle_lr=None,
)
# Keys the 0.x tutorial put into the train dataset dict; now unnecessary.
TUTORIAL_DATASET_KEYS = ('short_cycle_factors', 'default_s')


def _fail(key: str, message: str) -> None:
    raise ValueError(f'multi_grid.{key}: {message}')


def type_name(value) -> str:
    """Registered name of a config ``type``: a string (a scope prefix such
    as ``'mmengine.'`` dropped) or, in pure-Python configs, the class or
    function itself."""
    if isinstance(value, str):
        return value.rsplit('.', 1)[-1]
    return getattr(value, '__name__', str(value))


def _is_number(value) -> bool:
    """A finite real number; bools (ints in Python) are not numbers here."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_count(value) -> bool:
    """A positive int that is not a bool."""
    return (isinstance(value, numbers.Integral)
            and not isinstance(value, bool) and value >= 1)


def _check_factor(key: str, value) -> None:
    if not _is_number(value) or not 0 < value <= 1:
        _fail(key, f'each factor must be a number in (0, 1], got {value!r}.')


def validate_options(options: dict) -> dict:
    """Check a ``multi_grid`` dict and fill in the defaults.

    Args:
        options: The user's ``multi_grid`` dict.

    Returns:
        dict: All keys, with defaults (``default_s`` and ``bn_base_size``
        still unresolved when not given).

    Raises:
        ValueError: naming the key and what is allowed.
    """
    if not isinstance(options, dict):
        raise ValueError('multi_grid must be a dict, got '
                         f'{type(options).__name__}.')
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f'multi_grid: unknown key(s) {unknown}; allowed '
                         f'keys are {sorted(DEFAULTS)}.')
    opts = dict(DEFAULTS, **options)
    for key in ('long_cycle', 'short_cycle'):
        if not isinstance(opts[key], bool):
            _fail(key, f'must be True or False, got {opts[key]!r}.')
    if not opts['long_cycle'] and not opts['short_cycle']:
        raise ValueError('multi_grid.long_cycle and multi_grid.short_cycle '
                         'are both False; enable at least one of them.')
    factors = opts['long_cycle_factors']
    if (not isinstance(factors, (list, tuple)) or not factors or not all(
            isinstance(f, (list, tuple)) and len(f) == 2 for f in factors)):
        _fail(
            'long_cycle_factors', 'must be a non-empty list of '
            f'(t_factor, s_factor) pairs, got {factors!r}.')
    for pair in factors:
        for value in pair:
            _check_factor('long_cycle_factors', value)
    short = opts['short_cycle_factors']
    if not isinstance(short, (list, tuple)) or len(short) != 2:
        _fail('short_cycle_factors',
              f'must be two spatial factors, got {short!r}.')
    for value in short:
        _check_factor('short_cycle_factors', value)
    if not _is_number(opts['epoch_factor']) or opts['epoch_factor'] <= 0:
        _fail('epoch_factor',
              f'must be a positive number, got {opts["epoch_factor"]!r}.')
    size = opts['default_s']
    pair = isinstance(size, (list, tuple)) and len(size) == 2
    if size is not None and not (_is_count(size)
                                 or pair and all(_is_count(s) for s in size)):
        _fail('default_s', 'must be a positive int or (height, width), got '
              f'{size!r}.')
    bn = opts['bn_base_size']
    if bn not in ('auto', None) and not _is_count(bn):
        _fail(
            'bn_base_size', 'must be a positive int (clips per BN group), '
            f'None (plain BN), or left out, got {bn!r}.')
    precise = opts['precise_bn']
    if precise is not None and not (isinstance(precise, dict) and set(precise)
                                    <= {'num_iters', 'interval'} and _is_count(
                                        precise.get('num_iters', 200))
                                    and _is_count(precise.get('interval', 1))):
        _fail(
            'precise_bn', 'must be None or dict(num_iters=N) with N >= 1 '
            f'(and optionally interval=K epochs, K >= 1), got {precise!r}.')
    if opts['temporal_sampling'] not in ('span', 'random'):
        _fail(
            'temporal_sampling', "must be 'span' (keep the stock span) or "
            "'random' (interval drawn per clip from [r, r*T/t]), got "
            f"{opts['temporal_sampling']!r}.")
    if not isinstance(opts['reduced_decode'], bool):
        _fail('reduced_decode', 'must be True or False, got '
              f"{opts['reduced_decode']!r}.")
    if opts['prepared_copy'] is not None and not isinstance(
            opts['prepared_copy'], str):
        _fail(
            'prepared_copy', 'must be None or the folder written by '
            '`python -m mmaction_multigrid prepare`, got '
            f"{opts['prepared_copy']!r}.")
    if opts['lr_scaling'] not in LR_SCALINGS:
        _fail(
            'lr_scaling', f'must be one of {sorted(LR_SCALINGS)}, got '
            f'{opts["lr_scaling"]!r}.')
    if opts['short_cycle_lr'] not in (None, ) + SHORT_CYCLE_LRS:
        _fail(
            'short_cycle_lr', f'must be one of {list(SHORT_CYCLE_LRS)} or '
            'None (scaled for non-step LR schedules, constant for step '
            f"ones), got {opts['short_cycle_lr']!r}.")
    cycles = opts['num_long_cycles']
    if not isinstance(cycles, int) or isinstance(cycles, bool) or cycles < 1:
        _fail('num_long_cycles', f'must be an int >= 1, got {cycles!r}.')
    share = opts['fine_tune_share']
    if not _is_number(share) or not 0 <= share < 1:
        _fail('fine_tune_share', f'must be a number in [0, 1), got '
              f'{share!r}.')
    return opts


def _leaf_datasets(cfg: dict) -> List[dict]:
    """Dataset configs that own a pipeline (through stock wrappers)."""
    if 'datasets' in cfg:
        return [
            leaf for sub in cfg['datasets'] for leaf in _leaf_datasets(sub)
        ]
    if 'dataset' in cfg:
        return _leaf_datasets(cfg['dataset'])
    return [cfg]


def _absorb_tutorial_steps(dataset: dict, opts: dict) -> None:
    """Accept the 0.x tutorial's extra config steps, in place.

    ``short_cycle_factors`` / ``default_s`` in the dataset dicts are checked
    against ``multi_grid`` and removed; ``FormatShape('CTHW')`` becomes
    ``'NCTHW'``. One log line says they are no longer needed.
    """
    absorbed = []
    for cfg in [dataset] + _leaf_datasets(dataset):
        for key in TUTORIAL_DATASET_KEYS:
            if key not in cfg:
                continue
            value = cfg.pop(key)
            if key == 'default_s' and opts['default_s'] is None:
                opts['default_s'] = value
            if _as_size(value) != _as_size(opts[key]):
                raise ValueError(
                    f'train_dataloader.dataset.{key}={value!r} disagrees '
                    f'with multi_grid.{key}={opts[key]!r}; remove it from '
                    'the dataset (it is no longer needed).')
            absorbed.append(f'dataset.{key}')
        if 'pipeline' in cfg:
            cfg['pipeline'], changed = absorb_format(cfg['pipeline'])
            if changed:
                absorbed.append("FormatShape(input_format='CTHW')")
    if absorbed:
        print_log(
            f'multi_grid: {", ".join(sorted(set(absorbed)))} no longer '
            "needed (the plugin handles it; CTHW is read as 'NCTHW').",
            logger='current')


def _as_size(value):
    """Normalise a size or factor list for comparison."""
    if isinstance(value, int):
        return (value, value)
    return tuple(round(float(v), 4) for v in value) if value else value


def _schedulers(cfg: dict) -> List[dict]:
    """``param_scheduler`` as a list of dicts with class names as ``type``.

    Raises:
        ValueError: for a scheduler of another parameter than the LR.
    """
    schedulers = cfg.get('param_scheduler')
    if isinstance(schedulers, dict):
        schedulers = [schedulers]
    out = []
    for sched in schedulers or []:
        sched = dict(sched, type=type_name(sched.get('type')))
        if not sched['type'].endswith('LR'):
            raise ValueError(
                f'multi_grid: param_scheduler {sched["type"]} schedules '
                'something other than the LR; multigrid replaces the '
                'schedulers, so it supports LR schedulers only.')
        out.append(sched)
    return out


def _lr_schedule(cfg: dict, opts: dict) -> dict:
    """Arguments of :class:`MultiGridSchedule` for the stock LR schedule.

    A ``MultiStepLR``/``StepLR`` with an optional ``LinearLR`` warm-up
    follows the reference step rule; any other epoch-based schedule of
    closed-form schedulers (cosine, ...) becomes ``lr_terms``
    (:mod:`mmaction_multigrid.schedule.lr_rules`).
    """
    schedulers = _schedulers(cfg)
    if not is_step_schedule([s['type'] for s in schedulers]):
        lr = cfg['optim_wrapper']['optimizer']['lr']
        return dict(
            milestones=[],
            lr_terms=scheduler_terms(schedulers,
                                     cfg['train_cfg']['max_epochs'], lr),
            num_long_cycles=opts['num_long_cycles'],
            fine_tune_share=opts['fine_tune_share'])
    milestones, gamma, warmup_epochs, start = _step_schedule(schedulers, cfg)
    return dict(
        milestones=milestones,
        gamma=gamma,
        warmup_epochs=warmup_epochs,
        warmup_start_factor=start)


def _step_schedule(schedulers: List[dict],
                   cfg: dict) -> Tuple[List[int], float, int, float]:
    """Milestones, gamma, warm-up epochs and warm-up start factor.

    Raises:
        ValueError: for a step schedule the reference rule cannot follow.
    """
    max_epochs = cfg['train_cfg']['max_epochs']
    steps = next(s for s in schedulers if s['type'] != 'LinearLR')
    warmup = next((s for s in schedulers if s['type'] == 'LinearLR'), None)
    if not steps.get('by_epoch', True):
        raise ValueError(f'multi_grid: param_scheduler {steps["type"]} must '
                         'be epoch-based (by_epoch=True).')
    begin = steps.get('begin', 0)
    end = min(steps.get('end', max_epochs), max_epochs)
    if steps['type'] == 'StepLR':
        relative = range(steps['step_size'], end - begin, steps['step_size'])
    else:
        relative = steps['milestones']
    milestones = [begin + m for m in relative if 0 < begin + m < end]
    warmup_epochs, start = 0, 0.1
    if warmup is not None:
        if (not warmup.get('by_epoch', True) or warmup.get('begin', 0) != 0
                or warmup.get('end_factor', 1.0) != 1.0):
            raise ValueError(
                'multi_grid: the LinearLR warm-up must be epoch-based, '
                'begin at 0 and end at factor 1.0 (got '
                f'{dict(warmup)}).')
        warmup_epochs = warmup['end']
        start = warmup.get('start_factor', 1.0 / 3)
    return milestones, steps.get('gamma', 0.1), warmup_epochs, start


def schedule_args(cfg: dict, opts: Optional[dict] = None) -> dict:
    """Arguments of :class:`MultiGridSchedule` for a (stock) config.

    Args:
        cfg: The config, with ``multi_grid``.
        opts: Validated options; read from ``cfg`` when None.

    Returns:
        dict: Everything but ``batch_size``.
    """
    opts = opts or validate_options(cfg['multi_grid'])
    train_cfg = cfg.get('train_cfg') or {}
    if ('max_epochs' not in train_cfg
            or type_name(train_cfg.get('type', 'EpochBasedTrainLoop'))
            not in ('EpochBasedTrainLoop', 'MultiGridTrainLoop')
            or not train_cfg.get('by_epoch', True)):
        loop = type_name(train_cfg.get('type', 'EpochBasedTrainLoop'))
        raise ValueError('multi_grid needs epoch-based training with one '
                         f'train loader (train_cfg has type {loop}): set '
                         'train_cfg=dict(type="EpochBasedTrainLoop", '
                         'max_epochs=...).')
    leaves = _leaf_datasets(cfg['train_dataloader']['dataset'])
    pipelines = [leaf.get('pipeline') for leaf in leaves]
    if any(p is None for p in pipelines):
        raise ValueError('multi_grid: a train dataset has no `pipeline`.')
    first = pipelines[0]
    for pipeline in pipelines:
        check_format(pipeline)
        if (clip_params(pipeline),
                output_size(pipeline)) != (clip_params(first),
                                           output_size(first)):
            raise ValueError(
                'multi_grid: the train datasets have pipelines of different '
                'clip shapes; multigrid needs one default shape.')
    clip_len, interval = clip_params(first)
    size = output_size(first)
    if opts['default_s'] is not None and _as_size(opts['default_s']) != size:
        _fail(
            'default_s', f'{opts["default_s"]!r} differs from the train '
            f'pipeline output size {size} (height, width); make them '
            'equal or leave default_s out.')
    args = dict(
        clip_len=clip_len,
        frame_interval=interval,
        size=list(size),
        max_epochs=train_cfg['max_epochs'],
        **_lr_schedule(cfg, opts),
        long_cycle=opts['long_cycle'],
        short_cycle=opts['short_cycle'],
        long_cycle_factors=[list(f) for f in opts['long_cycle_factors']],
        short_cycle_factors=list(opts['short_cycle_factors']),
        epoch_factor=opts['epoch_factor'])
    if opts['lr_scaling'] != 'linear':
        args['lr_scaling'] = opts['lr_scaling']
    short_cycle_lr = opts['short_cycle_lr'] or ('constant' if 'lr_terms'
                                                not in args else 'scaled')
    if short_cycle_lr != 'constant':
        args['short_cycle_lr'] = short_cycle_lr
    return args


def is_converted(cfg: dict) -> bool:
    """Whether ``cfg`` is already a converted multigrid config."""
    dataset = (cfg.get('train_dataloader') or {}).get('dataset') or {}
    return type_name(dataset.get('type')) == 'MultiGridDataset'


def convert_config(cfg):
    """Rewrite a stock config with ``multi_grid`` for multigrid training.

    The train dataset is wrapped in ``MultiGridDataset``, batches come from
    ``ShortCycleBatchSampler``, ``MultiGridLR`` replaces the step schedule,
    ``train_cfg.max_epochs`` becomes the multigrid epoch count and
    ``runner_type`` becomes ``MultiGridRunner`` unless the config names its
    own Runner. MMEngine's default ``pseudo_collate`` becomes
    ``multigrid_collate`` (same batches, fewer shared-memory blocks per
    batch); another collate function is kept. The model's
    ``ActionDataPreprocessor`` becomes ``MultiGridDataPreprocessor`` (the
    same results, one device copy per field of a batch). ``MultiGridHook``
    and ``ExactResumeHook`` are added, and ``PreciseBNHook`` with
    ``precise_bn``. The schedule's arguments are written once, into the
    batch sampler; ``MultiGridRunner`` shares the schedule the sampler
    builds with the loop and ``MultiGridLR``. A converted config is returned
    unchanged.

    Args:
        cfg (dict | Config): A config with a ``multi_grid`` dict.

    Returns:
        Same type as ``cfg``: the converted copy.
    """
    cfg = copy.deepcopy(cfg)
    if is_converted(cfg):
        return cfg
    opts = validate_options(cfg['multi_grid'])
    loader = cfg['train_dataloader']
    _absorb_tutorial_steps(loader['dataset'], opts)
    args = schedule_args(cfg, opts)
    batch_size = loader['batch_size']
    if not _is_count(batch_size):
        raise ValueError('train_dataloader.batch_size must be a positive '
                         f'int, got {batch_size!r}.')
    schedule = MultiGridSchedule(batch_size=batch_size, **args)
    opts['default_s'] = list(schedule.size)
    if opts['bn_base_size'] == 'auto':
        opts['bn_base_size'] = batch_size
    drop_last = loader.pop('drop_last', True)
    loader['dataset'] = dict(
        type='MultiGridDataset',
        dataset=loader['dataset'],
        temporal_sampling=opts['temporal_sampling'],
        reduced_decode=opts['reduced_decode'],
        prepared_copy=opts['prepared_copy'])
    # Batches of up to 16x the stock clips reach the workers in chunks of
    # the stock batch size, so that several workers load each batch.
    loader['batch_sampler'] = dict(
        type='ShortCycleBatchSampler',
        drop_last=drop_last,
        schedule=args,
        chunk_size=batch_size)
    collate = loader.get('collate_fn', dict(type='pseudo_collate'))
    if list(collate) == ['type'] and type_name(
            collate['type']) == 'pseudo_collate':
        loader['collate_fn'] = dict(type='multigrid_collate')
    preprocessor = (cfg.get('model') or {}).get('data_preprocessor')
    if isinstance(preprocessor, dict) and type_name(
            preprocessor.get('type')) == 'ActionDataPreprocessor':
        preprocessor['type'] = 'MultiGridDataPreprocessor'
    cfg['param_scheduler'] = [dict(type='MultiGridLR')]
    cfg['train_cfg']['max_epochs'] = schedule.max_epochs
    hooks = list(cfg.get('custom_hooks') or [])
    hooks += [dict(type='MultiGridHook'), dict(type='ExactResumeHook')]
    if opts['precise_bn'] is not None:
        hooks.append(dict(type='PreciseBNHook', **opts['precise_bn']))
    cfg['custom_hooks'] = hooks
    # A user's own runner_type is kept: the switch mixes MultiGridRunner
    # into it (runner.multigrid_runner_class).
    if cfg.get('runner_type', 'Runner') == 'Runner':
        cfg['runner_type'] = 'MultiGridRunner'
    cfg['multi_grid'] = {
        k:
        list(map(list, v)) if k == 'long_cycle_factors' else
        (list(v) if isinstance(v, tuple) else v)
        for k, v in opts.items()
    }
    return cfg
