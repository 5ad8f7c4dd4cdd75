"""``plan CONFIG --measure``: predicted wall-clock of stock vs multigrid.

Times a few training iterations of the config's model at every batch shape
of the schedule on the device at hand, times the config's own train
pipeline (with the multigrid data-path options) on a sample of the train
set, and predicts each iteration as ``max(compute, data per batch /
workers)``: the data loader's workers decode in parallel with the model.
Stages whose data time exceeds their compute are data-bound.
"""
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..schedule.cycles import BatchShape, MultiGridSchedule

# batch size, clip_len, frame_interval, height, width
Key = Tuple[int, int, int, int, int]


def shape_key(shape: BatchShape) -> Key:
    """Key of a batch shape: batch size and clip shape."""
    return (shape.batch_size, shape.clip_len, shape.frame_interval) + tuple(
        shape.size)


def stock_key(schedule: MultiGridSchedule) -> Key:
    """Key of the stock batch shape."""
    return (schedule.batch_size, schedule.clip_len,
            schedule.frame_interval) + tuple(schedule.size)


@dataclass(frozen=True)
class Timing:
    """Measured cost of one batch shape.

    Attributes:
        batch_size: Clips per iteration (per GPU).
        compute_ms: Model forward + backward + step per iteration.
        clip_ms: Data-loading CPU per clip.
    """
    batch_size: int
    compute_ms: float
    clip_ms: float

    def iteration_ms(self, workers: int) -> float:
        """Predicted iteration time with ``workers`` loader processes."""
        return max(self.compute_ms, self.data_ms(workers))

    def data_ms(self, workers: int) -> float:
        """Loading time of one batch spread over ``workers`` processes."""
        return self.batch_size * self.clip_ms / max(1, workers)


def batch_keys(schedule: MultiGridSchedule) -> List[Key]:
    """Distinct batch shapes of the schedule, the stock one first."""
    found = [stock_key(schedule)]
    for epoch in range(schedule.max_epochs):
        for shape in schedule.batch_shapes(epoch):
            if shape_key(shape) not in found:
                found.append(shape_key(shape))
    return found


def predict(schedule: MultiGridSchedule, timings: Dict[Key, Timing],
            samples: int, workers: int) -> dict:
    """Predicted seconds of the stock and the multigrid schedule.

    Args:
        schedule: The multigrid schedule.
        timings: Measured timing per batch shape (:func:`batch_keys`).
        samples: Training clips per GPU per epoch.
        workers: Data loader processes per GPU.

    Each epoch has ``samples / mean batch size`` iterations (fractional),
    spread evenly over its short-cycle shapes; the stock run has
    ``samples / B`` per epoch.

    Returns:
        dict: ``stock_s``, ``multigrid_s``, ``stages`` (per stage: its row
        of :meth:`MultiGridSchedule.describe` plus ``seconds``,
        ``compute_s``, ``data_s`` and ``data_bound``) and ``epochs`` (the
        multigrid seconds of each epoch).
    """
    stock_s = (
        schedule.stock_max_epochs * samples / schedule.batch_size *
        timings[stock_key(schedule)].iteration_ms(workers) / 1e3)
    epochs = []
    stages = []
    for row in schedule.describe():
        total = compute = data = 0.0
        for epoch in range(row['begin'], row['end']):
            shapes = schedule.batch_shapes(epoch)
            # Iterations per short-cycle shape, fractional: a prediction.
            iters = samples / sum(s.batch_size for s in shapes)
            cycle = [timings[shape_key(s)] for s in shapes]
            seconds = iters * sum(t.iteration_ms(workers) for t in cycle) / 1e3
            compute += iters * sum(t.compute_ms for t in cycle) / 1e3
            data += iters * sum(t.data_ms(workers) for t in cycle) / 1e3
            epochs.append(seconds)
            total += seconds
        stages.append(
            dict(
                row,
                seconds=total,
                compute_s=compute,
                data_s=data,
                data_bound=data > compute))
    return dict(
        stock_s=stock_s, multigrid_s=sum(epochs), stages=stages, epochs=epochs)


def time_compute(model, batch: int, clip: Tuple[int, int, int, int],
                 iters: int, device: str) -> float:
    """Median ms of one forward + backward + SGD step on ``batch`` random
    clips of ``clip = (frames, interval, height, width)``."""
    import torch
    clip_len, _, h, w = clip
    inputs = torch.randn(batch, 1, 3, clip_len, h, w, device=device)
    optim = torch.optim.SGD(model.parameters(), lr=1e-4)
    times = []
    for _ in range(iters + 1):  # the first is a warm-up
        start = time.perf_counter()
        model(inputs, mode='tensor').float().mean().backward()
        optim.step()
        optim.zero_grad()
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times[1:]))


def time_data(dataset, shape, clips: int) -> float:
    """CPU ms per clip of ``dataset[shape]`` in this process.

    Clip ``k`` loads sample ``k * stride`` (spread over the set) after
    ``np.random.seed(k)``, so every shape sees the same samples; one
    untimed clip first builds the pipeline.

    Args:
        dataset: A
            :class:`~mmaction_multigrid.datasets.wrapper.MultiGridDataset`.
        shape: A ``ShapedIndex`` (its index is replaced), or None for the
            stock pipeline.
        clips: Clips timed.

    Returns:
        float: CPU milliseconds per clip.
    """
    n = len(dataset)
    stride = max(1, n // max(1, clips))
    dataset[0 if shape is None else shape._replace(index=0)]
    start = time.process_time()
    for k in range(clips):
        np.random.seed(k)
        index = (k * stride) % n
        dataset[index if shape is None else shape._replace(index=index)]
    return (time.process_time() - start) / clips * 1e3


def measure(cfg,
            iters: int = 3,
            clips: int = 8,
            device: Optional[str] = None) -> Tuple[Dict[Key, Timing], int]:
    """Time the model and the train pipeline of a multigrid config.

    Args:
        cfg: A config with ``multi_grid`` (stock or converted).
        iters: Timed iterations per shape (after one warm-up).
        clips: Clips timed per shape.
        device: Torch device; the GPU when there is one if None.

    Returns:
        tuple: the timing per batch shape (:func:`batch_keys`; the stock
        one with the stock pipeline) and the number of training clips.
    """
    import torch
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope

    from ..datasets.wrapper import MultiGridDataset, ShapedIndex
    from ..engine.convert import convert_config
    from ..engine.plan import build_plan
    from ..models.sub_batch_bn import convert_sub_batch_bn

    init_default_scope(cfg.get('default_scope', 'mmaction'))
    converted = convert_config(cfg)
    loader = converted['train_dataloader']
    schedule = build_plan(converted).schedule
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    model = MODELS.build(converted['model']).to(device).train()
    base_size = converted['multi_grid'].get('bn_base_size')
    if base_size:
        model = convert_sub_batch_bn(model, base_size)
    options = {
        k: v
        for k, v in loader['dataset'].items() if k not in ('type', 'dataset')
    }
    dataset = MultiGridDataset(loader['dataset']['dataset'], **options)
    data: Dict[Tuple[int, ...], float] = {}
    timings = {}
    for i, key in enumerate(batch_keys(schedule)):
        clip = key[1:]
        if clip not in data:
            data[clip] = time_data(dataset,
                                   None if i == 0 else ShapedIndex(0, *clip),
                                   clips)
        timings[key] = Timing(key[0],
                              time_compute(model, key[0], clip, iters, device),
                              data[clip])
    return timings, len(dataset)


def report(schedule: MultiGridSchedule, timings: Dict[Key, Timing],
           samples: int, workers: int, device: str) -> Tuple[str, dict]:
    """Text of the ``--measure`` section and the prediction it shows.

    Args:
        schedule: The multigrid schedule.
        timings: The output of :func:`measure`.
        samples: Training clips per GPU per epoch.
        workers: Data loader processes per GPU.
        device: Where the model was timed, for the heading.

    Returns:
        tuple[str, dict]: the text and the output of :func:`predict`.
    """
    result = predict(schedule, timings, samples, workers)
    lines = [
        f'measured on {device}, {workers} data workers per GPU, '
        f'{samples} clips per epoch:',
        '| shape (batch x frames x size, interval) | compute ms/iter '
        '| data ms/clip | data ms/iter |', '|---|---|---|---|'
    ]
    for i, ((b, t, r, h, w), timing) in enumerate(timings.items()):
        lines.append(f'| {"stock " * (i == 0)}{b}x{t}x{h}x{w}, {r} | '
                     f'{timing.compute_ms:.1f} | {timing.clip_ms:.2f} | '
                     f'{timing.data_ms(workers):.1f} |')
    lines += [
        '', '| stage | epochs | predicted s | compute s | data s | '
        'bound by |', '|---|---|---|---|---|---|'
    ]
    for stage in result['stages']:
        lines.append(f'| {stage["stage"]} | {stage["begin"]}-{stage["end"]} | '
                     f'{stage["seconds"]:.1f} | {stage["compute_s"]:.1f} | '
                     f'{stage["data_s"]:.1f} | '
                     f'{"data" if stage["data_bound"] else "compute"} |')
    bound = [str(s['stage']) for s in result['stages'] if s['data_bound']]
    lines += [
        '', f'predicted stock: {result["stock_s"]:.1f} s; multigrid: '
        f'{result["multigrid_s"]:.1f} s; speedup '
        f'{result["stock_s"] / result["multigrid_s"]:.2f}x',
        'data-bound stages: ' + (', '.join(bound) or 'none') +
        (f' (more than {workers} workers would help)' if bound else '')
    ]
    return '\n'.join(lines), result


def plot_timeline(schedule: MultiGridSchedule, result: dict, path: str,
                  title: str) -> None:
    """Cumulative predicted wall-clock per epoch, multigrid vs stock.

    Args:
        schedule: The multigrid schedule.
        result: The output of :func:`predict`.
        path: Output PNG file.
        title: Figure title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout='constrained')
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    hours = np.cumsum([0.0] + result['epochs']) / 3600
    ax.plot(range(len(hours)), hours, color='C0', lw=2, label='multigrid')
    stock = result['stock_s'] / schedule.stock_max_epochs / 3600
    ax.plot([0, schedule.stock_max_epochs],
            [0, stock * schedule.stock_max_epochs],
            '--',
            color='C7',
            label='stock')
    ax.set_xlabel('epoch')
    ax.set_ylabel('predicted wall-clock (h)')
    ax.legend(loc='upper left', fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
