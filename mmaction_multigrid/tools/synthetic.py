"""A small synthetic action data set that needs temporal information.

Each clip shows one bright shape (circle or square, random colour, size and
start position) moving over a random textured, noisy background. The class
is the *motion* of the shape, never its appearance, so a single frame says
nothing about the label. The shape wraps around the frame edges, so the
motion is visible over the whole clip however sparsely frames are sampled.

The motion kinds are chosen to survive the horizontal ``Flip`` of stock
MMAction2 training pipelines: a flip mirrors the horizontal direction, so
"left" and "right" form one class (the sign is random per clip):

====  ===========================================
kind  motion
====  ===========================================
0     horizontal (left or right)
1     down
2     up
3     diagonal down (down-left or down-right)
4     diagonal up (up-left or up-right)
====  ===========================================

Class ``c`` uses kind ``c % 5`` at speed tier ``c // 5`` (each tier moves
twice as fast as the one before), so up to 15 classes are supported.

Files are written in the MMAction2 1.x annotation formats, either as mp4
videos (``VideoDataset``) or as folders of JPEG frames
(``RawframeDataset``). Everything is deterministic given ``seed``.
"""
import os
import os.path as osp
from typing import Any, Dict, Iterator, List, Tuple

import cv2
import numpy as np

# (dx, dy, horizontal sign random per clip); y points down.
_KINDS = ((1.0, 0.0, True), (0.0, 1.0, False), (0.0, -1.0, False),
          (0.5**0.5, 0.5**0.5, True), (0.5**0.5, -(0.5**0.5), True))
_MAX_TIERS = 3
_BASE_SPEED = 0.03  # pixels per frame, as a fraction of min(height, width)
_FPS = 25
_FRAME_TMPL = 'img_{:05}.jpg'
_SPLITS = {'train': 0, 'val': 1, 'corrupt': 2}


def _render_clip(rng: np.random.Generator, label: int, num_frames: int,
                 size: Tuple[int, int]) -> Iterator[np.ndarray]:
    """Yields the BGR uint8 frames of one clip.

    Args:
        rng: Random generator of this clip.
        label: Class of the clip; selects the motion only.
        num_frames: Number of frames.
        size: Frame size ``(height, width)``.

    Yields:
        Frames of shape ``(height, width, 3)``.
    """
    h, w = size
    dx, dy, mirror = _KINDS[label % len(_KINDS)]
    if mirror and rng.random() < 0.5:
        dx = -dx
    speed = (
        _BASE_SPEED * min(h, w) * 2**(label // len(_KINDS)) *
        rng.uniform(0.85, 1.15))
    vx, vy = dx * speed, dy * speed

    # Dark textured background: smooth blobs plus fixed fine grain; every
    # channel stays below ~130 so the shape is the only bright thing.
    coarse = rng.uniform(20, 100, (max(h // 12, 2), max(w // 12, 2), 3))
    bg = cv2.resize(
        coarse.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    bg = np.clip(bg, 15, 105).astype(np.int16)
    bg += rng.integers(-12, 13, (h, w, 3), dtype=np.int16)

    hsv = np.array([[[rng.integers(0, 180),
                      rng.integers(120, 256), 255]]],
                   dtype=np.uint8)
    colour = tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])
    radius = rng.uniform(0.08, 0.14) * min(h, w)
    square = rng.random() < 0.5
    x0, y0 = rng.uniform(0, w), rng.uniform(0, h)

    scale = 16  # cv2 drawing with shift=4 gives sub-pixel positions
    r = int(round(radius * scale))
    for t in range(num_frames):
        noise = rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
        frame = np.clip(bg + noise, 0, 255).astype(np.uint8)
        cx, cy = (x0 + vx * t) % w, (y0 + vy * t) % h
        for ox in (-w, 0, w):  # draw the wrapped copies too
            for oy in (-h, 0, h):
                x, y = cx + ox, cy + oy
                if x + radius < 0 or x - radius > w or \
                        y + radius < 0 or y - radius > h:
                    continue
                px, py = int(round(x * scale)), int(round(y * scale))
                if square:
                    cv2.rectangle(frame, (px - r, py - r), (px + r, py + r),
                                  colour, -1, cv2.LINE_AA, 4)
                else:
                    cv2.circle(frame, (px, py), r, colour, -1, cv2.LINE_AA, 4)
        yield frame


def _write_video(path: str, frames: Iterator[np.ndarray],
                 size: Tuple[int, int]) -> None:
    """Writes frames to an mp4 file (fourcc 'mp4v', 25 fps)."""
    h, w = size
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), _FPS,
                             (w, h))
    if not writer.isOpened():
        raise RuntimeError(f'cv2.VideoWriter cannot open {path}')
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()


def _write_frames(folder: str, frames: Iterator[np.ndarray]) -> None:
    """Writes frames as ``img_00001.jpg``, ... into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    for i, frame in enumerate(frames, 1):
        if not cv2.imwrite(osp.join(folder, _FRAME_TMPL.format(i)), frame):
            raise RuntimeError(f'cv2.imwrite failed in {folder}')


def make_dataset(root: str,
                 num_classes: int = 4,
                 videos_per_class: int = 8,
                 num_frames: int = 48,
                 size: Tuple[int, int] = (96, 128),
                 fmt: str = 'video',
                 seed: int = 0,
                 val_per_class: int = 2,
                 corrupt: int = 0) -> Dict[str, Any]:
    """Generates a labelled synthetic action data set on disk.

    Writes ``root/train_list.txt`` and ``root/val_list.txt`` and the clips
    under ``root/videos/`` (lines ``train/00_000.mp4 LABEL``) or
    ``root/rawframes/`` (lines ``train/00_000 NUM_FRAMES LABEL``, frames
    ``img_00001.jpg``, ...). Existing files of the same name are overwritten.

    Args:
        root: Output directory (created if needed).
        num_classes: Number of classes, 1 to 15 (see the module docstring).
        videos_per_class: Training clips per class.
        num_frames: Frames per clip.
        size: Frame size ``(height, width)``; even numbers for videos.
        fmt: ``'video'`` (mp4) or ``'rawframes'`` (JPEG folders).
        seed: Seed; the same arguments give the same data.
        val_per_class: Validation clips per class.
        corrupt: Number of corrupt entries appended to the training list:
            truncated or garbage mp4 files for videos, or folders whose
            frames are missing (only a garbage ``img_00001.jpg``) for
            rawframes.

    Returns:
        Dict with ``root``, ``train_ann``, ``val_ann``, ``data_prefix``
        (the videos/ or rawframes/ directory), ``fmt`` (str) and
        ``num_classes`` (int).

    Raises:
        ValueError: On an unknown ``fmt`` or out-of-range argument.
    """
    if fmt not in ('video', 'rawframes'):
        raise ValueError(f"fmt must be 'video' or 'rawframes', got {fmt!r}")
    if not 1 <= num_classes <= len(_KINDS) * _MAX_TIERS:
        raise ValueError(f'num_classes must be in [1, '
                         f'{len(_KINDS) * _MAX_TIERS}], got {num_classes}')
    if num_frames < 1 or min(size) < 8 or corrupt < 0:
        raise ValueError('need num_frames >= 1, size >= 8 and corrupt >= 0')
    size = (int(size[0]), int(size[1]))
    is_video = fmt == 'video'
    prefix = osp.join(root, 'videos' if is_video else 'rawframes')

    def clip_rng(split: str, label: int, idx: int) -> np.random.Generator:
        return np.random.default_rng([seed, _SPLITS[split], label, idx])

    def write_clip(name: str, rng: np.random.Generator, label: int) -> str:
        frames = _render_clip(rng, label, num_frames, size)
        if is_video:
            _write_video(osp.join(prefix, name + '.mp4'), frames, size)
            return f'{name}.mp4 {label}'
        _write_frames(osp.join(prefix, name), frames)
        return f'{name} {num_frames} {label}'

    lines: Dict[str, List[str]] = {}
    for split, per_class in (('train', videos_per_class), ('val',
                                                           val_per_class)):
        os.makedirs(osp.join(prefix, split), exist_ok=True)
        lines[split] = [
            write_clip(f'{split}/{label:02d}_{idx:03d}',
                       clip_rng(split, label, idx), label)
            for label in range(num_classes) for idx in range(per_class)
        ]

    for idx in range(corrupt):
        rng = clip_rng('corrupt', 0, idx)
        label = int(rng.integers(num_classes))
        name = f'train/corrupt_{idx:03d}'
        garbage = rng.integers(0, 256, 2048, dtype=np.uint8).tobytes()
        if is_video:
            path = osp.join(prefix, name + '.mp4')
            if idx % 2 == 0:  # a real video cut short (no moov atom)
                _write_video(path, _render_clip(rng, label, num_frames, size),
                             size)
                with open(path, 'r+b') as f:
                    f.truncate(os.path.getsize(path) // 3)
            else:
                with open(path, 'wb') as f:
                    f.write(garbage)
            lines['train'].append(f'{name}.mp4 {label}')
        else:
            folder = osp.join(prefix, name)
            os.makedirs(folder, exist_ok=True)
            for old in os.listdir(folder):
                os.remove(osp.join(folder, old))
            with open(osp.join(folder, _FRAME_TMPL.format(1)), 'wb') as f:
                f.write(garbage)
            lines['train'].append(f'{name} {num_frames} {label}')

    info: Dict[str, Any] = dict(
        root=root,
        train_ann=osp.join(root, 'train_list.txt'),
        val_ann=osp.join(root, 'val_list.txt'),
        data_prefix=prefix,
        fmt=fmt,
        num_classes=num_classes)
    for split in ('train', 'val'):
        with open(info[f'{split}_ann'], 'w') as f:
            f.write(''.join(line + '\n' for line in lines[split]))
    return info


def dataset_cfg(info: Dict[str, Any],
                pipeline: list,
                split: str = 'train') -> dict:
    """Returns an MMAction2 dataset config for a generated data set.

    Args:
        info: The dict returned by :func:`make_dataset`.
        pipeline: Data pipeline (list of transform configs).
        split: ``'train'`` or ``'val'`` (the latter sets ``test_mode``).

    Returns:
        A ``VideoDataset`` or ``RawframeDataset`` config dict, ready for a
        dataloader's ``dataset`` field.
    """
    if split not in ('train', 'val'):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    cfg = dict(
        ann_file=info[f'{split}_ann'],
        pipeline=pipeline,
        test_mode=split != 'train')
    if info['fmt'] == 'video':
        cfg.update(
            type='VideoDataset', data_prefix=dict(video=info['data_prefix']))
    else:
        cfg.update(
            type='RawframeDataset',
            data_prefix=dict(img=info['data_prefix']),
            filename_tmpl=_FRAME_TMPL)
    return cfg
