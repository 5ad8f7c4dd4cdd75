"""Configs as the command-line tools read them: ``--cfg-options`` merged,
and the plan a config trains with."""
from typing import Optional

from mmengine.config import Config

from ..engine.convert import convert_config
from ..engine.plan import build_plan
from ..schedule.plan import MultiGridPlan

ADD_MULTI_GRID = (
    'add `multi_grid = dict()` (the paper defaults) and `custom_imports = '
    "dict(imports=['mmaction_multigrid'], allow_failed_imports=False)` to "
    'the config, or try it with `--cfg-options multi_grid.long_cycle=True`')


def load_config(path: str, options: Optional[dict] = None) -> Config:
    """Load a config and merge ``--cfg-options`` into it.

    An option value ``{}`` gives an empty dict, so ``multi_grid={}`` adds
    ``multi_grid`` with its defaults (``multi_grid.long_cycle=True`` does
    too).

    Args:
        path: Config file.
        options: Parsed ``--cfg-options``. Defaults to None.

    Returns:
        Config: The merged config.
    """
    cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict({
            k: {} if v == '{}' else v
            for k, v in options.items()
        })
    return cfg


def config_plan(cfg: Config) -> MultiGridPlan:
    """The multigrid plan a config trains with.

    Args:
        cfg: A config with ``multi_grid`` (stock or already converted).

    Returns:
        MultiGridPlan: With the config's per-GPU batch size; no epoch
        lengths (the sample count is not known here).

    Raises:
        ValueError: if the config has no ``multi_grid`` or cannot be
            converted.
    """
    if cfg.get('multi_grid') is None:
        raise ValueError(f'the config has no `multi_grid`; {ADD_MULTI_GRID}.')
    return build_plan(convert_config(cfg))
