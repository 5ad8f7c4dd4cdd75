"""Tests of ``python -m mmaction_multigrid plan|demo``."""
import os.path as osp
import re
import subprocess
import sys

import mmaction
import pytest
from matplotlib.image import imread

from mmaction_multigrid.tools.cli import main

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
STOCK = osp.join(
    osp.dirname(mmaction.__file__), '.mim', 'configs', 'recognition')
I3D = osp.join(
    STOCK, 'i3d',
    'i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py')
SLOWFAST = osp.join(
    ROOT, 'configs',
    'slowfast_r50_8xb8-8x8x1-steplr-256e_kinetics400-rgb_multigrid.py')
ADD = ['--cfg-options', 'multi_grid.long_cycle=True']


def _cli(*args, cwd=ROOT, timeout=120):
    """Run the CLI as a real subprocess."""
    return subprocess.run([sys.executable, '-m', 'mmaction_multigrid', *args],
                          cwd=cwd,
                          capture_output=True,
                          text=True,
                          timeout=timeout)


def _stage_ends(text):
    return [int(m) for m in re.findall(r'^\s+\d+\s+\d+-(\d+)', text, re.M)]


def test_plan_i3d_subprocess(tmp_path):
    result = _cli('plan', I3D, '--out', str(tmp_path), *ADD)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert _stage_ends(out) == [32, 47, 61, 68, 100, 115, 129, 136, 150]
    assert 'epochs: 100 stock, 150 multigrid' in out
    ratio, less = map(
        float,
        re.search(r'compute: ([\d.]+) of the stock run \(([\d.]+)x less\)',
                  out).groups())
    assert ratio == pytest.approx(0.296, abs=0.001)
    assert less == pytest.approx(3.4, abs=0.05)
    assert 'no custom_imports' in out  # the stock config lacks them
    png = tmp_path / ('i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_'
                      'kinetics400-rgb_multigrid_plan.png')
    assert f'plot: {png}' in out
    assert png.stat().st_size > 30_000
    image = imread(str(png))
    assert image.shape[0] > 600 and image.shape[1] > 800
    assert image.std() > 0.05  # not blank


def test_plan_without_matplotlib_says_how_to_get_the_plot(tmp_path):
    code = ('import sys; sys.modules["matplotlib"] = None; '
            'from mmaction_multigrid.tools.cli import main; '
            f'sys.exit(main(["plan", {I3D!r}, "--out", {str(tmp_path)!r}] + '
            f'{list(ADD)!r}))')
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True,
                            text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'compute: 0.296 of the stock run' in result.stdout
    assert 'mmaction-multigrid[plot]' in result.stdout
    assert not list(tmp_path.glob('*.png'))


def test_plan_slowfast_warmup(tmp_path, capsys):
    assert main(['plan', SLOWFAST, '--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert _stage_ends(out) == [
        76, 114, 147, 164, 212, 237, 258, 268, 302, 319, 334, 342, 384
    ]
    assert 'epochs: 256 stock, 384 multigrid' in out
    assert 'warm-up: linear from 0.01 to 0.8 over the first 34 epochs' in out
    assert 'no custom_imports' not in out
    assert len(list(tmp_path.glob('*_multigrid_plan.png'))) == 1


def test_plan_cosine_shows_the_rule(tmp_path, capsys):
    """A stock cosine config: stage ends of the documented rule (K=2 equal
    phases of the first 80%, then fine-tuning), the rule in the table's
    caption and in the PNG."""
    import reference as ref
    path = osp.join(STOCK, 'slowfast',
                    'slowfast_r50_8xb8-8x8x1-256e_kinetics400-rgb.py')
    assert main([
        'plan', path, '--out',
        str(tmp_path), '--cfg-options', 'multi_grid={}'
    ]) == 0
    out = capsys.readouterr().out
    want = ref.long_cycle(32, (224, 224), 256, ref.cosine_phases(256, 2, 0.2),
                          ((0.25, 0.5**0.5), (0.5, 0.5**0.5), (0.5, 1),
                           (1, 1)), (0.5, 0.5**0.5), True, 1.5)
    assert _stage_ends(out) == [s[2] for s in want]
    assert ('lr rule: the stock LinearLR + CosineAnnealingLR (MMEngine) at '
            'the equivalent stock epoch x b') in out
    assert 'lr steps' not in out
    png, = tmp_path.glob('*_multigrid_plan.png')
    assert imread(str(png)).std() > 0.05
    assert main([
        'plan', path, '--out',
        str(tmp_path), '--cfg-options', 'multi_grid.long_cycle=False'
    ]) == 0
    out = capsys.readouterr().out
    assert 'stretched by epoch_factor 1.5' in out
    assert 'epochs: 256 stock, 384 multigrid' in out


def test_plan_empty_dict_option(tmp_path, capsys):
    assert main([
        'plan', I3D, '--out',
        str(tmp_path), '--cfg-options', 'multi_grid={}',
        'multi_grid.epoch_factor=2'
    ]) == 0
    assert 'epochs: 100 stock, 200 multigrid' in capsys.readouterr().out


ERRORS = [
    pytest.param(
        I3D, [], 'the config has no `multi_grid`; add `multi_grid '
        '= dict()`',
        id='no-multi-grid'),
    pytest.param(
        osp.join(
            STOCK, 'tsn', 'tsn_imagenet-pretrained-r50_8xb32-1x1x3-100e_'
            'kinetics400-rgb.py'),
        ADD,
        'multigrid needs a 3D recogniser',
        id='tsn'),
    pytest.param(
        osp.join(STOCK, 'slowfast',
                 'slowfast_r50_8xb8-8x8x1-256e_kinetics400-rgb.py'),
        ADD + ['param_scheduler.1.type=ReduceOnPlateauLR'],
        'param_scheduler ReduceOnPlateauLR follows validation metrics',
        id='metric-scheduler'),
    pytest.param(
        I3D,
        ADD +
        ['train_dataloader.dataset.pipeline.1.type='
         'UniformSampleFrames'],
        'pipeline has no SampleFrames',
        id='no-sample-frames'),
    pytest.param(
        I3D, ['--cfg-options', 'multi_grid.epoch_factor=0'],
        'multi_grid.epoch_factor: must be a positive number',
        id='bad-option'),
    pytest.param(
        'missing_config.py', [], 'missing_config.py', id='missing-file'),
]


@pytest.mark.parametrize('config, options, message', ERRORS)
def test_plan_errors(tmp_path, capsys, config, options, message):
    assert main(['plan', config, '--out', str(tmp_path), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err
    assert 'Traceback' not in err
    assert not list(tmp_path.iterdir())


def test_plan_error_subprocess(tmp_path):
    result = _cli('plan', I3D, '--out', str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith('error: the config has no `multi_grid`')
    assert '--cfg-options multi_grid.long_cycle=True' in result.stderr
    assert 'Traceback' not in result.stderr


def test_demo_learns(tmp_path):
    """The demo shortened to 20 stock epochs (30 multigrid epochs, about a
    minute here) learns: top-1 well above chance on its 64 validation
    clips (0.672 when written; chance 0.25)."""
    work_dir = tmp_path / 'demo'
    result = _cli(
        'demo',
        '--work-dir',
        str(work_dir),
        '--epochs',
        '20',
        cwd=str(tmp_path),
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(
        r'^demo: final validation top-1 accuracy ([\d.]+) \(chance 0\.25\) '
        r'after 30 epochs, \d+ s$', result.stdout, re.M)
    assert match, result.stdout[-3000:]
    # The printed accuracy is the last validation's, as MMEngine logged it.
    logs = sorted(work_dir.glob('*/*.log'))
    logged = re.findall(r'acc/top1: ([\d.]+)', logs[-1].read_text())
    assert float(match.group(1)) == pytest.approx(float(logged[-1]), abs=1e-3)
    assert float(match.group(1)) >= 0.5
    assert (work_dir / 'epoch_30.pth').is_file()
    assert (work_dir / 'data' / 'train_list.txt').is_file()
