"""MultiGridDataset: a dataset wrapper that loads clips of the shape an index
carries.

The short-cycle batch sampler yields :class:`ShapedIndex` tuples; this
wrapper (running in the DataLoader workers) maps the index to a leaf
dataset, as MMEngine's ``ConcatDataset``/``RepeatDataset`` do, takes the
sample's data info from it and runs its own pipeline for that shape. The
wrapped datasets are only read. Nothing is kept between samples, so any
number of workers and ``persistent_workers=True`` work.
An index may also carry the sample's seed (see :mod:`.rng`): the sample
is then augmented the same whichever process loads it.
"""
import copy
import json
import logging
import os.path as osp
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
from mmaction.registry import DATASETS, TRANSFORMS
from mmengine.dataset import BaseDataset, Compose
from mmengine.logging import print_log

from .pipeline import (clip_params, random_interval, read_copy, reduced_decode,
                       reshape_pipeline, select_copy)
from .rng import seeded
from .transforms import copy_folder
from .walk import leaf_datasets, locate

MANIFEST = 'prepared.json'


class ShapedIndex(NamedTuple):
    """A dataset index and the clip shape to load it with.

    Attributes:
        index: Index into the wrapped dataset.
        clip_len: Frames per clip.
        frame_interval: Temporal stride.
        height: Output height.
        width: Output width.
        seed: Seed of the sample's augmentation random numbers; None draws
            them from the loading process's streams. Defaults to None.
    """
    index: int
    clip_len: int
    frame_interval: int
    height: int
    width: int
    seed: Optional[int] = None


class FailureCount:
    """Failed samples of one process, shared by the pipelines of a dataset.

    A dataset object is copied into every DataLoader worker, so the count is
    per process: per worker, or the training process with
    ``num_workers=0``.

    Attributes:
        succeeded: Whether a sample has loaded in this process.
        consecutive: Failures since the last sample that loaded.
    """

    def __init__(self) -> None:
        self.succeeded = False
        self.consecutive = 0


class SkipBroken:
    """Pipeline wrapper that skips a sample that fails to load, but stops
    on what looks like a bug.

    A failing sample (a corrupt or truncated video, a missing frame) becomes
    ``None``, with a warning naming its file and the error:
    :class:`MultiGridDataset` then loads a random other sample through the
    same pipeline (up to ``max_refetch`` times), so the batch keeps its
    shape.

    Failures that come in a row raise the pipeline's own error (a broken
    transform, a wrong data root or decoder fails on every sample):

    - before any sample has loaded in this process, the
      :attr:`FAILURES_AT_START`-th consecutive failure raises;
    - afterwards, the :attr:`FAILURES_IN_A_ROW`-th one does (a disk gone
      mid-run): corrupt files scattered in a data set rarely come ten in a
      row.

    Args:
        pipeline (Compose): The pipeline to guard.
        failures (FailureCount): The count of this process, shared by the
            pipelines of one dataset. Defaults to a new one.
    """

    FAILURES_AT_START = 3
    FAILURES_IN_A_ROW = 10

    def __init__(self,
                 pipeline: Compose,
                 failures: Optional[FailureCount] = None) -> None:
        self.pipeline = pipeline
        self.failures = failures or FailureCount()

    def __call__(self, results: dict) -> Optional[dict]:
        source = results.get('filename', results.get('frame_dir'))
        failures = self.failures
        try:
            data = self.pipeline(results)
        except Exception as error:  # decoders raise many types
            failures.consecutive += 1
            limit = (
                self.FAILURES_IN_A_ROW
                if failures.succeeded else self.FAILURES_AT_START)
            if failures.consecutive >= limit:
                print_log(
                    f'{failures.consecutive} samples failed in a row'
                    f'{"" if failures.succeeded else " before any loaded"},'
                    f' the last {source}: stopping with its error (more '
                    'likely a pipeline or data-path problem than corrupt '
                    'files).',
                    logger='current',
                    level=logging.ERROR)
                raise
            print_log(
                f'Skipping unreadable sample {source}: '
                f'{type(error).__name__}: {error}',
                logger='current',
                level=logging.WARNING)
            return None
        failures.succeeded = True
        failures.consecutive = 0
        return data


def _leaves(cfg: dict, dataset: Any) -> List[Tuple[BaseDataset, list]]:
    """Leaf datasets under stock wrappers, with their pipeline configs."""
    # Built from ``cfg``: the two walks meet the same leaves in order.
    leaves = list(zip(leaf_datasets(dataset), leaf_datasets(cfg)))
    for _, leaf_cfg in leaves:
        if 'pipeline' not in leaf_cfg:
            raise ValueError(
                f'MultiGridDataset: the dataset config {leaf_cfg.get("type")}'
                ' has no `pipeline`; cannot apply multigrid shapes to it.')
    return [(leaf, list(leaf_cfg['pipeline'])) for leaf, leaf_cfg in leaves]


def _load(dataset: BaseDataset, idx: int, pipeline: SkipBroken) -> dict:
    """Sample ``idx`` of leaf ``dataset`` through ``pipeline``.

    A skipped sample is replaced as ``BaseDataset.__getitem__`` would: by a
    random other sample of the same dataset, ``max_refetch`` times at most;
    none in test mode. The same draws, so a seed gives the same sample.
    """
    if dataset.test_mode:
        data = pipeline(dataset.get_data_info(idx))
        if data is None:
            # MMEngine's messages, word for word.
            raise Exception('Test time pipline should not get `None` '
                            'data_sample')
        return data
    for _ in range(dataset.max_refetch + 1):
        data = pipeline(dataset.get_data_info(idx))
        if data is not None:
            return data
        idx = np.random.randint(0, len(dataset))
    raise Exception(f'Cannot find valid image after {dataset.max_refetch}! '
                    'Please check your image path and pipeline')


@DATASETS.register_module()
class MultiGridDataset:
    """Wrap a train dataset so that each sample has the shape its index asks.

    Args:
        dataset (dict): Config of the wrapped dataset (``VideoDataset``,
            ``RawframeDataset``, or a stock wrapper around them). A config is
            needed, not an instance: the pipeline is rebuilt from it for each
            shape.
        lazy_init (bool): Whether to defer loading the annotations.
            Defaults to False.
        temporal_sampling (str): ``'span'``: a shape of ``t`` frames keeps
            the stock span (interval ``r*T/t``); ``'random'``: the interval
            is drawn per clip from ``[r, r*T/t]`` (PySlowFast).
            Defaults to ``'span'``.
        reduced_decode (bool): Whether rawframes are decoded at a reduced
            size where the shape's first resize shrinks them at least 2x.
            Defaults to False (the config conversion passes
            ``multi_grid.reduced_decode``, True by default).
        prepared_copy (str, optional): Folder written by ``python -m
            mmaction_multigrid prepare``; each smaller shape reads the
            smallest copy that is not smaller than its first resize.
            Defaults to None.

    Note:
        A sample whose pipeline raises (a corrupt video) is skipped: another
        one is fetched with the same shape; failures in a row stop the run
        with their own error, see :class:`SkipBroken`.
        Plain integer indices (validation, precise BN, a stock sampler) load
        the default shape with the wrapped dataset's own pipeline. A
        pipeline is built once per distinct shape per process, on first
        use. A :class:`ShapedIndex` with a ``seed`` loads its sample
        (refetches of skipped samples included) with Python, NumPy and
        torch CPU random numbers seeded by it.
    """

    def __init__(self,
                 dataset: Union[dict, BaseDataset],
                 lazy_init: bool = False,
                 temporal_sampling: str = 'span',
                 reduced_decode: bool = False,
                 prepared_copy: Optional[str] = None) -> None:
        if not isinstance(dataset, dict):
            raise TypeError(
                'MultiGridDataset needs the dataset *config* (a dict) to '
                'rebuild its pipeline per shape, got '
                f'{type(dataset).__name__}.')
        self._cfg = copy.deepcopy(dataset)
        self.dataset = DATASETS.build(dataset)
        self._leaves = _leaves(self._cfg, self.dataset)
        self._failures = FailureCount()
        self._stock = [
            SkipBroken(leaf.pipeline, self._failures)
            for leaf, _ in self._leaves
        ]
        self._pipelines: Dict[Tuple[int, ShapedIndex], SkipBroken] = {}
        self._metainfo = copy.deepcopy(self.dataset.metainfo)
        self.temporal_sampling = temporal_sampling
        self.reduced_decode = reduced_decode
        self.prepared_copy = prepared_copy
        self._copy = None if prepared_copy is None else _manifest(
            prepared_copy)
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @property
    def metainfo(self) -> dict:
        """Meta information of the wrapped dataset (a copy)."""
        return copy.deepcopy(self._metainfo)

    def full_init(self) -> None:
        """Fully initialise the wrapped dataset."""
        if self._fully_initialized:
            return
        self.dataset.full_init()
        self._fully_initialized = True

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def decodes_video(self) -> bool:
        """Whether a train set decodes video files at every shape (no
        prepared copy)."""
        decoders = {'DecordDecode', 'PyAVDecode', 'OpenCVDecode'}
        return self._copy is None and any(
            str(step.get('type')).rsplit('.', 1)[-1] in decoders
            or getattr(step.get('type'), '__name__', None) in decoders
            for _, pipeline in self._leaves for step in pipeline)

    def pipeline_for(self,
                     shape: Optional[ShapedIndex] = None,
                     leaf: int = 0) -> SkipBroken:
        """The pipeline that loads samples of a leaf dataset at a shape.

        Args:
            shape: The clip shape (its ``index`` and ``seed`` are ignored);
                None: the leaf's own pipeline, for plain indices. Defaults
                to None.
            leaf: Position of the leaf dataset in the wrapped dataset's
                sample order (see :func:`.walk.leaf_datasets`). Defaults
                to 0.

        Returns:
            SkipBroken: The guarded pipeline, built on first use.
        """
        if shape is None:
            return self._stock[leaf]
        key = (leaf, shape._replace(index=0, seed=None))
        if key not in self._pipelines:
            cfg = reshape_pipeline(self._leaves[leaf][1], shape.clip_len,
                                   shape.frame_interval,
                                   (shape.height, shape.width))
            cfg = self._data_path(leaf, cfg)
            self._pipelines[key] = SkipBroken(
                Compose([TRANSFORMS.build(t) for t in cfg]), self._failures)
        return self._pipelines[key]

    def _data_path(self, leaf: int, cfg: List[dict]) -> List[dict]:
        """Apply the data-path options to a reshaped pipeline config."""
        dataset, stock = self._leaves[leaf]
        if self.temporal_sampling == 'random':
            clip_len, interval = clip_params(stock)
            cfg = random_interval(cfg, interval, clip_len)
        if self._copy is not None:
            side = select_copy(cfg, self._copy['short_sides'])
            if side is not None:
                source = self._copy['source']
                cfg = read_copy(
                    cfg, copy_folder(self.prepared_copy, side),
                    dataset.data_prefix['video' if source ==
                                        'video' else 'img'], source)
        if self.reduced_decode:
            cfg = reduced_decode(cfg)
        return cfg

    def __getitem__(self, idx: Union[int, ShapedIndex, tuple]) -> dict:
        if not self._fully_initialized:
            print_log(
                'Please call `full_init()` method manually to accelerate '
                'the speed.',
                logger='current',
                level=logging.WARNING)
            self.full_init()
        shape: Optional[ShapedIndex] = None
        if isinstance(idx, tuple):
            shape = ShapedIndex(*idx)
            idx = shape.index
        dataset, idx = locate(self.dataset, idx)
        # By identity: pickling into workers keeps it, not ids.
        leaf = next(i for i, (candidate, _) in enumerate(self._leaves)
                    if candidate is dataset)
        with seeded(None if shape is None else shape.seed):
            return _load(dataset, idx, self.pipeline_for(shape, leaf))


def _manifest(root: str) -> dict:
    """The manifest of a prepared copy (its resolutions and source kind).

    Raises:
        ValueError: if ``root`` holds no finished copy.
    """
    path = osp.join(root, MANIFEST)
    if not osp.isfile(path):
        raise ValueError(
            f'multi_grid.prepared_copy={root!r} has no {MANIFEST}: run '
            '`python -m mmaction_multigrid prepare CONFIG --out DIR` to '
            'the end, or remove multi_grid.prepared_copy.')
    with open(path) as f:
        return json.load(f)
