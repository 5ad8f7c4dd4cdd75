"""The ``multi_grid`` options of a config, checked once.

:class:`MultiGridOptions` is the only place where a ``multi_grid`` key is
checked; every error names the key and what is allowed.
"""
import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Optional, Tuple, Union

from .lr_rules import LR_SCALINGS

DEFAULT_LONG_CYCLE_FACTORS = ((0.25, 0.5**0.5), (0.5, 0.5**0.5), (0.5, 1), (1,
                                                                            1))
DEFAULT_SHORT_CYCLE_FACTORS = (0.5, 0.5**0.5)
# multi_grid.short_cycle_lr: the LR of the short cycle's larger batches.
SHORT_CYCLE_LRS = ('constant', 'scaled')
TEMPORAL_SAMPLINGS = ('span', 'random')
# multi_grid.bn_grouping: groups of bn_base_size clips, or PySlowFast's
# fixed number of groups per long-cycle stage.
BN_GROUPINGS = ('size', 'splits')


def is_count(value) -> bool:
    """Whether ``value`` is a positive int that is not a bool."""
    return (isinstance(value, numbers.Integral)
            and not isinstance(value, bool) and value >= 1)


def check_count(key: str, value, what: str = 'a positive int') -> None:
    """Raise unless ``value`` is a positive int (not a bool).

    Args:
        key: The config key, as the user wrote it (named in the error).
        value: The value to check.
        what: What the key holds, for the message.

    Raises:
        ValueError: ``'{key} must be {what}, got {value!r}.'``
    """
    if not is_count(value):
        raise ValueError(f'{key} must be {what}, got {value!r}.')


def _is_number(value) -> bool:
    """A finite real number; bools (ints in Python) are not numbers here."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _fail(key: str, message: str) -> None:
    raise ValueError(f'multi_grid.{key}: {message}')


def _factor(key: str, value) -> float:
    if not _is_number(value) or not 0 < value <= 1:
        _fail(key, f'each factor must be a number in (0, 1], got {value!r}.')
    return value


Size = Union[int, Tuple[int, int]]


@dataclass(frozen=True)
class MultiGridOptions:
    """The ``multi_grid`` dict of a config, with its defaults.

    See the README's option table. Build it with :meth:`from_dict`, which
    checks every key.
    """
    long_cycle: bool = True
    short_cycle: bool = True
    long_cycle_factors: Tuple[Tuple[float, float],
                              ...] = DEFAULT_LONG_CYCLE_FACTORS
    short_cycle_factors: Tuple[float, float] = DEFAULT_SHORT_CYCLE_FACTORS
    epoch_factor: float = 1.5
    default_s: Optional[Size] = None
    bn_base_size: Union[int, str, None] = 'auto'
    bn_grouping: str = 'splits'
    precise_bn: Optional[dict] = None
    temporal_sampling: str = 'span'
    reduced_decode: bool = True
    prepared_copy: Optional[str] = None
    lr_scaling: str = 'linear'
    num_long_cycles: int = 2
    fine_tune_share: float = 0.2
    short_cycle_lr: Optional[str] = None

    @classmethod
    def from_dict(cls, options) -> 'MultiGridOptions':
        """Check a ``multi_grid`` dict and fill in the defaults.

        Args:
            options (dict): The config's ``multi_grid``.

        Returns:
            MultiGridOptions: The options; ``default_s``, ``bn_base_size``
            and ``short_cycle_lr`` may still be unresolved (``None`` /
            ``'auto'``): the plan resolves them from the config.

        Raises:
            ValueError: naming the key and what is allowed.
        """
        if not isinstance(options, dict):
            raise ValueError('multi_grid must be a dict, got '
                             f'{type(options).__name__}.')
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(f'multi_grid: unknown key(s) {unknown}; allowed '
                             f'keys are {sorted(names)}.')
        opts = dict(asdict(cls()), **options)
        for key in ('long_cycle', 'short_cycle', 'reduced_decode'):
            if not isinstance(opts[key], bool):
                _fail(key, f'must be True or False, got {opts[key]!r}.')
        if not opts['long_cycle'] and not opts['short_cycle']:
            raise ValueError('multi_grid.long_cycle and multi_grid.'
                             'short_cycle are both False; enable at least '
                             'one of them.')
        opts['long_cycle_factors'] = _long_factors(opts['long_cycle_factors'])
        short = opts['short_cycle_factors']
        if not isinstance(short, (list, tuple)) or len(short) != 2:
            _fail('short_cycle_factors',
                  f'must be two spatial factors, got {short!r}.')
        opts['short_cycle_factors'] = tuple(
            _factor('short_cycle_factors', f) for f in short)
        if not _is_number(opts['epoch_factor']) or opts['epoch_factor'] <= 0:
            _fail(
                'epoch_factor', 'must be a positive number, got '
                f'{opts["epoch_factor"]!r}.')
        opts['default_s'] = _size(opts['default_s'])
        bn = opts['bn_base_size']
        if bn not in ('auto', None) and not is_count(bn):
            _fail(
                'bn_base_size', 'must be a positive int (clips per BN '
                f'group), None (plain BN), or left out, got {bn!r}.')
        if opts['bn_grouping'] not in BN_GROUPINGS:
            _fail(
                'bn_grouping', "must be 'size' (groups of bn_base_size clips)"
                " or 'splits' (PySlowFast: base batch / bn_base_size groups "
                f"per long-cycle stage), got {opts['bn_grouping']!r}.")
        _check_precise_bn(opts['precise_bn'])
        if opts['temporal_sampling'] not in TEMPORAL_SAMPLINGS:
            _fail(
                'temporal_sampling', "must be 'span' (keep the stock span) "
                "or 'random' (interval drawn per clip from [r, r*T/t]), got "
                f"{opts['temporal_sampling']!r}.")
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
                'short_cycle_lr', f'must be one of {list(SHORT_CYCLE_LRS)} '
                'or None (scaled for non-step LR schedules, constant for '
                f"step ones), got {opts['short_cycle_lr']!r}.")
        if not is_count(opts['num_long_cycles']):
            _fail('num_long_cycles', 'must be an int >= 1, got '
                  f"{opts['num_long_cycles']!r}.")
        share = opts['fine_tune_share']
        if not _is_number(share) or not 0 <= share < 1:
            _fail('fine_tune_share', 'must be a number in [0, 1), got '
                  f'{share!r}.')
        return cls(**opts)

    def to_dict(self) -> dict:
        """The options as a plain, JSON-able dict (lists for tuples), as
        written into a converted config and a checkpoint."""

        def plain(value):
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value

        return {k: plain(v) for k, v in asdict(self).items()}


def _long_factors(factors) -> Tuple[Tuple[float, float], ...]:
    if (not isinstance(factors, (list, tuple)) or not factors or not all(
            isinstance(f, (list, tuple)) and len(f) == 2 for f in factors)):
        _fail(
            'long_cycle_factors', 'must be a non-empty list of '
            f'(t_factor, s_factor) pairs, got {factors!r}.')
    return tuple(
        tuple(_factor('long_cycle_factors', v) for v in pair)
        for pair in factors)


def _size(size) -> Optional[Size]:
    if size is None or is_count(size):
        return size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(
            is_count(s) for s in size):
        return tuple(size)
    _fail('default_s', 'must be a positive int or (height, width), got '
          f'{size!r}.')


def _check_precise_bn(precise) -> None:
    if precise is None:
        return
    if not (isinstance(precise, dict)
            and set(precise) <= {'num_iters', 'interval'}
            and is_count(precise.get('num_iters', 200))
            and is_count(precise.get('interval', 1))):
        _fail(
            'precise_bn', 'must be None or dict(num_iters=N) with N >= 1 '
            f'(and optionally interval=K epochs, K >= 1), got {precise!r}.')
