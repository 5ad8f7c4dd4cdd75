"""benchmarks/bench_e2e.py at toy scale on the CPU: its runs train through
the real Runner on generated video and rawframes, and its figures are
consistent with what it measured."""
import json
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

from bench_e2e import whole_schedule  # noqa: E402


def test_whole_schedule_weighs_stages_by_their_epochs():
    fields = ('ms_per_clip', 'compute_ms_per_clip',
              'timer_compute_ms_per_clip')
    stock = {f: 8.0 for f in fields}
    weights = {'a': 90, 'b': 60}  # 150 multigrid epochs
    results = {
        'stock-video':
        dict(stages=dict(stock=stock)),
        'mg':
        dict(
            stages=dict(
                a={f: 8.0
                   for f in fields}, b={f: 8.0
                                        for f in fields})),
    }
    same = whole_schedule(results, 'mg', weights, 100, 'stock-video')
    assert same['speedup'] == pytest.approx(100 / 150)
    results['mg']['stages']['a'] = {f: 2.0 for f in fields}
    results['mg']['stages']['b'] = {f: 4.0 for f in fields}
    faster = whole_schedule(results, 'mg', weights, 100, 'stock-video')
    assert faster['speedup'] == pytest.approx(800 / (90 * 2 + 60 * 4))
    del results['mg']['stages']['b']  # a stage missing: no figure
    assert whole_schedule(results, 'mg', weights, 100, 'stock-video') == {}


def test_toy_run_on_the_cpu(tmp_path):
    out = tmp_path / 'e2e.json'
    cmd = [
        sys.executable,
        osp.join(ROOT, 'benchmarks', 'bench_e2e.py'), '--toy', '--device',
        'cpu', '--size', '32', '--stock-batch', '2', '--workers', '2',
        '--videos', '4', '--seconds', '3', '--warmup', '3', '--measure', '3',
        '--replays', '1', '--conditions', 'stock-video', 'mg-rawframes',
        '--stages', '0', '3', '--root',
        str(tmp_path / 'data'), '--work-dir',
        str(tmp_path / 'work'), '--out',
        str(out)
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result['command'].startswith('python benchmarks/bench_e2e.py')
    stock = result['conditions']['stock-video']['stages']['stock']
    assert stock['shapes'] == [[2, 32, 32, 32]]
    stages = result['conditions']['mg-rawframes']['stages']
    assert set(stages) == {'8x23x23', '32x32x32'}
    # stage 0 trains its short cycle: 32/16/16 clips of 8 frames
    assert stages['8x23x23']['shapes'] == [[16, 8, 23, 23], [32, 8, 16, 16]]
    for run in [stock, *stages.values()]:
        assert run['iterations'] == 3
        assert 0 <= run['data_wait_share'] <= 1
        assert 0 < run['timer_compute_ms_per_clip'] <= run['ms_per_clip']
        assert run['compute_ms_per_clip'] > 0
        marks = run['marks']
        assert 0 < marks['built'] <= marks['before_run'] <= marks['ready']
