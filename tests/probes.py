"""Test-only hooks and config helpers for the distributed, resume,
robustness and loop tests.

- ``SampleRecorder`` records, for every training forward of the backbone,
  the epoch, iteration, input shape, LR, the files of the samples in the
  batch and a digest of each clip's pixels (as loaded), per rank, as JSON
  lines appended to ``<work_dir>/samples_rank<R>.jsonl`` (one line per
  forward, so a killed run leaves its records and a resumed run adds its
  own).
- ``KillAt`` sends SIGKILL to its own process before the iteration named
  by the environment variable ``MG_KILL_AT="epoch:iter"`` (0-based).
- ``LoaderIterators`` records the epoch at which the train batch sampler's
  iteration starts (once per epoch in the stock loop).

They are registered on import; add this module to ``custom_imports``.
"""
import hashlib
import json
import os
import os.path as osp
import signal

from mmaction.registry import HOOKS
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

# A ResNet3d-18 with 8 base channels: the stock I3D structure, ~100x less
# compute than R50, so that CI can afford several runs.
TINY_I3D = {
    'model.backbone.depth': 18,
    'model.backbone.base_channels': 8,
    'model.backbone.inflate': ((1, 1), (1, 0), (1, 0), (0, 1)),
    'model.cls_head.in_channels': 64,
}


def with_filenames(cfg) -> None:
    """Make the train pipeline pack each sample's ``filename`` (in place)."""
    dataset = cfg.train_dataloader.dataset
    while 'pipeline' not in dataset:
        dataset = dataset['dataset']
    for transform in dataset['pipeline']:
        if transform['type'] == 'PackActionInputs':
            transform['meta_keys'] = ('img_shape', 'filename', 'frame_dir')


def digest(clip) -> str:
    """Short hex digest of a tensor's values."""
    data = clip.detach().cpu().contiguous().numpy().tobytes()
    return hashlib.sha1(data).hexdigest()[:16]


def read_samples(work_dir: str, rank: int = 0) -> list:
    """Records written by :class:`SampleRecorder` for ``rank``, in order."""
    with open(osp.join(work_dir, f'samples_rank{rank}.jsonl')) as f:
        return [json.loads(line) for line in f]


@HOOKS.register_module(force=True)
class SampleRecorder(Hook):
    """Record (epoch, iter, shape, lr, files, inputs) of every training
    forward; ``inputs`` are the :func:`digest` of each clip."""

    priority = 'VERY_LOW'

    def before_train(self, runner) -> None:
        self.current = None  # only forwards inside a train iteration count
        path = osp.join(runner.work_dir, f'samples_rank{get_rank()}.jsonl')
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model

        def pre_hook(module, args):
            if module.training and self.current is not None:
                record = dict(
                    self.current,
                    shape=list(args[0].shape),
                    lr=runner.optim_wrapper.param_groups[0]['lr'])
                with open(path, 'a') as f:
                    f.write(json.dumps(record) + '\n')

        model.backbone.register_forward_pre_hook(pre_hook)

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        files = []
        for sample in (data_batch or {}).get('data_samples', []):
            meta = sample.metainfo
            name = meta.get('filename', meta.get('frame_dir'))
            files.append(osp.basename(str(name)))
        inputs = [digest(x) for x in (data_batch or {}).get('inputs', [])]
        self.current = dict(
            epoch=runner.epoch, iter=batch_idx, files=files, inputs=inputs)

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None) -> None:
        self.current = None


@HOOKS.register_module(force=True)
class KillAt(Hook):
    """SIGKILL this process before iteration ``MG_KILL_AT=epoch:iter``."""

    priority = 'VERY_HIGH'

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        target = os.environ.get('MG_KILL_AT')
        if target and tuple(map(
                int, target.split(':'))) == (runner.epoch, batch_idx):
            os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module(force=True)
class LoaderIterators(Hook):
    """Record the epoch of every start of the train batch sampler's
    iteration (one per epoch in the stock loop)."""

    def before_train(self, runner) -> None:
        batch_sampler = runner.train_dataloader.batch_sampler
        self.starts = []
        original = type(batch_sampler).__iter__

        def counting_iter(sampler):
            # A generator: counted when the loader first draws from it.
            self.starts.append(runner.epoch)
            yield from original(sampler)

        # A subclass per run, so other runs keep the stock class.
        batch_sampler.__class__ = type('Counting', (type(batch_sampler), ),
                                       {'__iter__': counting_iter})
