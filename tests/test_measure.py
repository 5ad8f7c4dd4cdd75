"""``plan CONFIG --measure``: the printed prediction is the schedule summed
over the printed per-shape timings."""
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config

from mmaction_multigrid.tools.cli import DEMO_CONFIG, config_plan, main
from mmaction_multigrid.tools.synthetic import dataset_cfg

WORKERS = 2


@pytest.fixture
def config(tmp_path, videos):
    """The demo config at batch 1, 8 x 32 x 32 clips, half its channels,
    on the test videos."""
    cfg = Config.fromfile(DEMO_CONFIG)
    pipeline = [dict(t) for t in cfg.train_pipeline]
    pipeline[1].update(clip_len=8)
    pipeline[3].update(scale=(-1, 36))
    pipeline[4].update(input_size=32)
    pipeline[5].update(scale=(32, 32))
    cfg.train_dataloader.dataset = dataset_cfg(videos, pipeline)
    cfg.train_dataloader.batch_size = 1
    cfg.multi_grid.default_s = (32, 32)
    cfg.model.backbone.base_channels = 8  # quick to time
    cfg.model.cls_head.in_channels = 64
    path = str(tmp_path / 'tiny.py')
    cfg.dump(path)
    return path


def rows(text: str, pattern: str) -> list:
    return [m.groups() for m in re.finditer(pattern, text)]


def test_measure_predicts_the_sum_of_its_shapes(config, tmp_path, capsys):
    threads = torch.get_num_threads()
    assert main([
        'plan', config, '--out',
        str(tmp_path), '--measure', '--iters', '1', '--clips', '2',
        '--workers',
        str(WORKERS), '--device', 'cpu'
    ]) == 0
    out = capsys.readouterr().out
    shapes = rows(
        out, r'\| (stock )?(\d+)x(\d+)x(\d+)x(\d+), (\d+) \| '
        r'([\d.]+) \| ([\d.]+) \| ([\d.]+) \|')
    timing = {
        (int(b), int(t), int(r), int(h), int(w)): (float(c), float(d))
        for _, b, t, h, w, r, c, d, _ in shapes
    }
    assert shapes[0][0] == 'stock ' and (1, 8, 1, 32, 32) in timing
    samples = 16  # the videos fixture: 4 classes x 4
    schedule = config_plan(Config.fromfile(config)).schedule
    epochs = schedule.stock_max_epochs

    def iteration(key):
        compute, clip = timing[key]
        return max(compute, key[0] * clip / WORKERS), compute, (
            key[0] * clip / WORKERS)

    expected, stage_bound = 0.0, []
    for row in schedule.describe():
        compute = data = 0.0
        for epoch in range(row['begin'], row['end']):
            batch = schedule.batch_shapes(epoch)
            iters = samples / sum(s.batch_size for s in batch)
            for s in batch:
                total, c, d = iteration((s.batch_size, s.clip_len,
                                         s.frame_interval) + tuple(s.size))
                expected += iters * total / 1e3
                compute += iters * c / 1e3
                data += iters * d / 1e3
        stage_bound.append('data' if data > compute else 'compute')
    stock = epochs * samples * iteration((1, 8, 1, 32, 32))[0] / 1e3
    found = re.search(r'predicted stock: ([\d.]+) s; multigrid: ([\d.]+) s',
                      out)
    assert float(found.group(1)) == pytest.approx(stock, rel=0.01, abs=0.1)
    assert float(found.group(2)) == pytest.approx(expected, rel=0.01, abs=0.1)
    printed = rows(
        out, r'\| (\d+) \| \d+-\d+ \| [\d.]+ \| [\d.]+ \| '
        r'[\d.]+ \| (data|compute) \|')
    assert [bound for _, bound in printed] == stage_bound
    named = re.search(r'data-bound stages: (.*)', out).group(1)
    assert named.startswith(
        ', '.join(str(i) for i, b in enumerate(stage_bound) if b == 'data')
        or 'none')
    assert osp.isfile(str(tmp_path / 'tiny_multigrid_measure.png'))
    assert torch.get_num_threads() == threads  # restored after timing
