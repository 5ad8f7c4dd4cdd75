"""`mim train mmaction CONFIG` trains a multigrid config of this repo."""
import os
import os.path as osp
import subprocess
import sys

from mmaction_multigrid.tools.synthetic import make_dataset

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

CHILD = '''
_base_ = ['{repo}/configs/demo_multigrid.py']
data = dict(type='VideoDataset', data_prefix=dict(video='{prefix}'))
train_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                        dataset=dict(ann_file='{train}', **data))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(ann_file='{val}', **data))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=2, val_interval=1)
param_scheduler = [dict(type='MultiStepLR', begin=0, end=2, by_epoch=True,
                        milestones=[1], gamma=0.1)]
'''


def test_mim_train_runs_a_repo_config(tmp_path):
    info = make_dataset(
        str(tmp_path / 'data'),
        videos_per_class=6,
        num_frames=24,
        size=(72, 96))
    config = tmp_path / 'demo_mim.py'
    config.write_text(
        CHILD.format(
            repo=REPO,
            prefix=info['data_prefix'],
            train=info['train_ann'],
            val=info['val_ann']))
    work = tmp_path / 'work'
    proc = subprocess.run([
        sys.executable, '-m', 'mim', 'train', 'mmaction',
        str(config), '--work-dir',
        str(work)
    ],
                          capture_output=True,
                          text=True,
                          timeout=900,
                          env=dict(os.environ, PYTHONUNBUFFERED='1'))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert 'Multigrid schedule (3 epochs instead of 2' in out
    dumped = (work / 'demo_mim.py').read_text()
    assert "type='ShortCycleBatchSampler'" in dumped
    assert (work / 'epoch_3.pth').exists()
