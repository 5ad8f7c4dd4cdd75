"""Rewrite a stock config with ``multi_grid`` for multigrid training.

:func:`convert_config` is a pure function on config dicts: it returns a new
config whose train dataloader, LR schedule, epochs and hooks implement the
multigrid schedule, and leaves the input untouched.
"""
import copy

from mmengine.logging import print_log

from ..datasets.pipeline import absorb_format
from ..datasets.walk import leaf_datasets
from ..schedule.options import MultiGridOptions
from .plan import STOCK_KEY, build_plan, type_name

# Keys the 0.x tutorial put into the train dataset dict; now unnecessary.
TUTORIAL_DATASET_KEYS = ('short_cycle_factors', 'default_s')


def _absorb_tutorial_steps(dataset: dict, options: dict) -> None:
    """Accept the 0.x tutorial's extra config steps, in place.

    ``short_cycle_factors`` / ``default_s`` in the dataset dicts are checked
    against ``multi_grid`` (a ``default_s`` that ``multi_grid`` leaves out is
    moved there) and removed; ``FormatShape('CTHW')`` becomes ``'NCTHW'``.
    One log line says they are no longer needed.

    Args:
        dataset: The train dataset config.
        options: The config's ``multi_grid`` dict.
    """
    defaults = MultiGridOptions()
    absorbed = []
    for cfg in [dataset] + leaf_datasets(dataset):
        for key in TUTORIAL_DATASET_KEYS:
            if key not in cfg:
                continue
            value = cfg.pop(key)
            if key == 'default_s' and options.get(key) is None:
                options[key] = value
            if _as_size(value) != _as_size(
                    options.get(key, getattr(defaults, key))):
                raise ValueError(
                    f'train_dataloader.dataset.{key}={value!r} disagrees '
                    f'with multi_grid.{key}={options.get(key)!r}; remove '
                    'it from the dataset (it is no longer needed).')
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


def is_converted(cfg: dict) -> bool:
    """Whether ``cfg`` is already a converted multigrid config.

    Raises:
        ValueError: for a config converted by an earlier version, which
            kept no copy of the stock schedule.
    """
    dataset = (cfg.get('train_dataloader') or {}).get('dataset') or {}
    converted = type_name(dataset.get('type')) == 'MultiGridDataset'
    if converted and STOCK_KEY not in cfg:
        raise ValueError(
            'This config was converted by an earlier mmaction-multigrid (it '
            f'has no `{STOCK_KEY}`); train the stock config with '
            '`multi_grid` instead: it is converted when the run starts.')
    return converted


def convert_config(cfg):
    """Rewrite a stock config with ``multi_grid`` for multigrid training.

    The train dataset is wrapped in ``MultiGridDataset``, batches come from
    ``ShortCycleBatchSampler``, ``MultiGridLR`` replaces the LR schedulers,
    ``train_cfg.max_epochs`` becomes the multigrid epoch count and
    ``runner_type`` becomes ``MultiGridRunner`` unless the config names its
    own Runner. The stock epochs and schedulers are kept under
    ``multi_grid_stock``, and ``multi_grid`` holds every option, resolved:
    ``MultiGridRunner`` builds the run's one plan
    (:func:`~mmaction_multigrid.engine.plan.build_plan`) from them and hands
    it to the sampler, the loop, the LR scheduler and the hooks.

    MMEngine's default ``pseudo_collate`` becomes ``multigrid_collate``
    (same batches, fewer shared-memory blocks per batch); another collate
    function is kept. The model's ``ActionDataPreprocessor`` becomes
    ``MultiGridDataPreprocessor`` (the same results, one device copy per
    field of a batch). ``MultiGridHook`` and ``ExactResumeHook`` are added,
    and ``PreciseBNHook`` with ``precise_bn``. A converted config is
    returned unchanged.

    Args:
        cfg (dict | Config): A config with a ``multi_grid`` dict.

    Returns:
        Same type as ``cfg``: the converted copy.

    Raises:
        ValueError: naming the config key and the fix.
    """
    cfg = copy.deepcopy(cfg)
    if is_converted(cfg):
        return cfg
    if not isinstance(cfg['multi_grid'], dict):
        MultiGridOptions.from_dict(cfg['multi_grid'])  # raises, says why
    cfg['multi_grid'] = dict(cfg['multi_grid'])
    loader = cfg['train_dataloader']
    _absorb_tutorial_steps(loader['dataset'], cfg['multi_grid'])
    plan = build_plan(cfg)
    options = plan.options
    loader['dataset'] = dict(
        type='MultiGridDataset',
        dataset=loader['dataset'],
        temporal_sampling=options.temporal_sampling,
        reduced_decode=options.reduced_decode,
        prepared_copy=options.prepared_copy)
    # Batches of up to 16x the stock clips reach the workers in chunks of
    # the stock batch size, so that several workers load each batch.
    loader['batch_sampler'] = dict(
        type='ShortCycleBatchSampler',
        drop_last=plan.drop_last,
        chunk_size=loader['batch_size'])
    loader.pop('drop_last', None)
    collate = loader.get('collate_fn', dict(type='pseudo_collate'))
    if list(collate) == ['type'] and type_name(
            collate['type']) == 'pseudo_collate':
        loader['collate_fn'] = dict(type='multigrid_collate')
    preprocessor = (cfg.get('model') or {}).get('data_preprocessor')
    if isinstance(preprocessor, dict) and type_name(
            preprocessor.get('type')) == 'ActionDataPreprocessor':
        preprocessor['type'] = 'MultiGridDataPreprocessor'
    cfg[STOCK_KEY] = dict(
        max_epochs=plan.stock['max_epochs'],
        param_scheduler=plan.stock['param_scheduler'])
    cfg['param_scheduler'] = [dict(type='MultiGridLR')]
    cfg['train_cfg']['max_epochs'] = plan.schedule.max_epochs
    hooks = list(cfg.get('custom_hooks') or [])
    hooks += [dict(type='MultiGridHook'), dict(type='ExactResumeHook')]
    if options.precise_bn is not None:
        hooks.append(dict(type='PreciseBNHook', **options.precise_bn))
    cfg['custom_hooks'] = hooks
    # A user's own runner_type is kept: the switch mixes MultiGridRunner
    # into it (engine.switch.multigrid_runner_class).
    if cfg.get('runner_type', 'Runner') == 'Runner':
        cfg['runner_type'] = 'MultiGridRunner'
    cfg['multi_grid'] = options.to_dict()
    return cfg
