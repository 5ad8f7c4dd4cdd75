"""MMEngine's checkpoints load under torch's weights-only check once the
plugin is imported, without TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD; other globals
are still refused."""
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest
import torch
from conftest import TESTS, TOOLS, toy_config
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner
from probes import TINY_I3D

import mmaction_multigrid  # noqa: F401  (extends the allowlist)

I3D = 'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py'


def tool(*args):
    """``python tools/<args>`` in a fresh process, the environment variable
    that switches the weights-only check off removed."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS='1',
        PYTHONPATH=TESTS + os.pathsep + os.environ.get('PYTHONPATH', ''))
    env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    cmd = [sys.executable, osp.join(TOOLS, args[0])
           ] + [str(a) for a in args[1:]]
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def trained(videos, tmp_path_factory):
    """A 3-epoch multigrid run (stock E=2), checkpoints every epoch."""
    root = tmp_path_factory.mktemp('compat')
    cfg = toy_config(
        I3D,
        videos,
        work_dir=str(root / 'work'),
        max_epochs=2,
        milestones=(1, ),
        multi_grid=dict(),
        options=dict(TINY_I3D, **{'train_cfg.val_interval': 100}))
    # The stock ThreeCrop test pipeline needs larger frames than the toy's.
    cfg.test_dataloader = cfg.val_dataloader
    cfg.test_evaluator = cfg.val_evaluator
    cfg.dump(str(root / 'mg.py'))
    Runner.from_cfg(cfg).train()
    return root / 'mg.py', root / 'work'


def test_resume_and_test_tools_without_the_variable(trained):
    config, work = trained
    # Resume from epoch 2: the run loads it and trains the last epoch.
    os.remove(work / 'epoch_3.pth')
    (work / 'last_checkpoint').write_text(str(work / 'epoch_2.pth'))
    proc = tool('train.py', config, '--work-dir', work, '--resume')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Weights only load failed' not in proc.stderr
    assert 'resumed epoch: 2' in proc.stdout + proc.stderr
    assert osp.exists(work / 'epoch_3.pth')
    proc = tool('test.py', config, work / 'epoch_3.pth', '--work-dir',
                work / 'test')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'acc/top1' in proc.stdout + proc.stderr


def test_checkpoint_loads_weights_only(trained, monkeypatch):
    """As MMEngine calls it (no weights_only argument): the message hub's
    HistoryBuffers come back with their statistics."""
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    _, work = trained
    ckpt = torch.load(work / 'epoch_2.pth', map_location='cpu')
    loss = ckpt['message_hub']['log_scalars']['train/loss']
    assert isinstance(loss, HistoryBuffer)
    assert loss.statistics('min') <= loss.mean() <= loss.statistics('max')
    assert ckpt['multi_grid']['ranks'][0]['rng']['numpy'][1].dtype == 'uint32'


class Evil:
    """Pickled as a call of its ``__reduce__`` result."""

    def __init__(self, call):
        self.call = call

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize(
    'payload',
    [
        {
            'f': os.system
        },  # another global
        Evil((os.system, ('true', ))),  # a call of it
        Evil((getattr, (HistoryBuffer, '__init__'))),  # getattr, not a
        Evil((getattr, (torch.Tensor, 'numpy'))),  # statistic
    ])
def test_other_globals_still_refused(payload, tmp_path, monkeypatch):
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    path = tmp_path / 'evil.pth'
    torch.save(payload, path)
    with pytest.raises(pickle.UnpicklingError, match='Weights only load'):
        torch.load(path)
