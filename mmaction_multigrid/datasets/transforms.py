"""Data transforms that make a clip's loading cost fall with its shape.

Registered into MMAction2's ``TRANSFORMS``; the multigrid pipeline rewrites
(:func:`~mmaction_multigrid.datasets.pipeline.random_interval`,
:func:`~mmaction_multigrid.datasets.pipeline.reduced_decode`,
:func:`~mmaction_multigrid.datasets.pipeline.read_copy`) put them into the
per-shape pipelines only, so the stock (default) shape keeps the stock
pipeline:

- :class:`RandomIntervalSampleFrames`: the authors' temporal sampling
  (PySlowFast ``get_random_sampling_rate``): at a shape with fewer frames
  than the stock clip, the frame interval is drawn per clip from the
  integers ``[r, r*T/t]``.
- :class:`ReducedRawFrameDecode`: ``RawFrameDecode`` that lets libjpeg
  decode at 1/2, 1/4 or 1/8 size (DCT scaling) when the following resize
  shrinks the frame at least that much, never below the resize's output.
- :class:`PreparedFrameInit`: points a sample at the frames of a prepared
  reduced-resolution copy (``python -m mmaction_multigrid prepare``).
"""
import os
import os.path as osp
import struct
from typing import Optional, Sequence, Tuple

import cv2
import mmcv
import numpy as np
from mmaction.datasets.transforms import RawFrameDecode, SampleFrames
from mmaction.registry import TRANSFORMS
from mmcv.transforms import BaseTransform
from mmengine.fileio import FileClient

Size = Tuple[int, int]
# cv2 flags of libjpeg's DCT-scaled decoding, by reduction factor.
# EXIF orientation is ignored, as mmcv's ``imfrombytes`` does for the stock
# ``RawFrameDecode``.
REDUCED_FLAGS = {
    2: cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION,
    4: cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_IGNORE_ORIENTATION,
    8: cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION,
}
# JPEG start-of-frame markers (baseline, progressive, ...), which hold the
# image size; 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@TRANSFORMS.register_module()
class RandomIntervalSampleFrames(SampleFrames):
    """``SampleFrames`` whose frame interval is drawn anew for every clip.

    The interval is uniform over the integers ``[low, high]``, drawn with
    NumPy's global RNG (as ``SampleFrames`` draws its offsets), so a worker
    seeded per sample draws deterministically. Multigrid uses
    ``low = r`` and ``high = r * T / t`` for a shape of ``t`` frames out of
    the stock ``T`` frames at interval ``r`` (PySlowFast), so some clips keep
    the stock span and the mean span is shorter.

    Args:
        interval_range (Sequence[int]): ``(low, high)``, both inclusive.
        **kwargs: The arguments of ``SampleFrames`` except
            ``frame_interval``.
    """

    def __init__(self, interval_range: Sequence[int], **kwargs) -> None:
        low, high = (int(v) for v in interval_range)
        if not 1 <= low <= high:
            raise ValueError('RandomIntervalSampleFrames.interval_range must '
                             f'be (low, high) with 1 <= low <= high, got '
                             f'{tuple(interval_range)}.')
        kwargs.pop('frame_interval', None)
        super().__init__(frame_interval=low, **kwargs)
        self.interval_range = (low, high)

    def transform(self, results: dict) -> dict:
        """Draw the interval, then sample as ``SampleFrames``."""
        low, high = self.interval_range
        self.frame_interval = int(np.random.randint(low, high + 1))
        return super().transform(results)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(clip_len={self.clip_len}, '
                f'interval_range={self.interval_range}, '
                f'num_clips={self.num_clips}, test_mode={self.test_mode})')


def jpeg_size(data: bytes) -> Size:
    """``(height, width)`` of a JPEG image from its header.

    Args:
        data: The bytes of a JPEG file.

    Returns:
        tuple[int, int]: The image height and width.

    Raises:
        ValueError: if ``data`` is not a JPEG image with a frame header.
    """
    if data[:2] != b'\xff\xd8':
        raise ValueError('not a JPEG image (no SOI marker)')
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f'corrupt JPEG header at byte {pos}')
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, ) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack('>H', data[pos + 2:pos + 4])[0]
        if marker in _SOF_MARKERS:
            height, width = struct.unpack('>HH', data[pos + 5:pos + 9])
            return height, width
        pos += 2 + length
    raise ValueError('no JPEG frame header found')


def resize_output(size: Size, scale, keep_ratio: bool) -> Size:
    """``(height, width)`` MMAction2's ``Resize`` makes of a ``size`` image.

    Args:
        size: Input ``(height, width)``.
        scale: ``Resize.scale``: a float factor, or ``(w, h)`` where ``-1``
            means unbounded (with ``keep_ratio``).
        keep_ratio: ``Resize.keep_ratio``.

    Returns:
        tuple[int, int]: Output ``(height, width)``.
    """
    h, w = size
    if isinstance(scale, float):
        new_w, new_h = mmcv.rescale_size((w, h), scale)
    elif keep_ratio:
        bound = tuple(np.inf if s == -1 else s for s in scale)
        new_w, new_h = mmcv.rescale_size((w, h), bound)
    else:
        new_w, new_h = scale
    return int(new_h), int(new_w)


def reduction_factor(size: Size, target: Size) -> int:
    """Largest libjpeg reduction that stays at least ``target`` in size.

    libjpeg's scaled decoding of a ``(h, w)`` image by ``f`` gives
    ``(ceil(h/f), ceil(w/f))``.

    Args:
        size: Full ``(height, width)`` of the JPEG image.
        target: ``(height, width)`` that the following resize outputs.

    Returns:
        int: 1, 2, 4 or 8.
    """
    h, w = size
    for factor in (8, 4, 2):
        if (-(-h // factor) >= target[0] and -(-w // factor) >= target[1]):
            return factor
    return 1


@TRANSFORMS.register_module()
class ReducedRawFrameDecode(RawFrameDecode):
    """``RawFrameDecode`` that decodes JPEG frames at a reduced size.

    The reduction (1/2, 1/4 or 1/8, libjpeg's DCT scaling) is the largest
    that keeps the decoded frame at least as large as the following
    ``Resize`` outputs, so nothing is upsampled that the stock pipeline does
    not upsample. It is chosen once per clip from the first frame's header;
    when no reduction fits, the clip is decoded exactly as
    ``RawFrameDecode`` does.

    Args:
        scale: ``scale`` of the ``Resize`` that follows the decode.
        keep_ratio (bool): ``keep_ratio`` of that ``Resize``.
            Defaults to True.
        io_backend (str): IO backend where frames are stored.
            Defaults to ``'disk'``.
        **kwargs: Arguments of the file client.
    """

    def __init__(self,
                 scale,
                 keep_ratio: bool = True,
                 io_backend: str = 'disk',
                 **kwargs) -> None:
        super().__init__(
            io_backend=io_backend, decoding_backend='cv2', **kwargs)
        self.scale = scale if isinstance(scale, float) else tuple(scale)
        self.keep_ratio = keep_ratio

    def transform(self, results: dict) -> dict:
        """Decode the clip's frames at the reduced size."""
        if results.get('modality', 'RGB') != 'RGB':
            return super().transform(results)
        if self.file_client is None:
            self.file_client = FileClient(self.io_backend, **self.kwargs)
        inds = np.atleast_1d(np.squeeze(results['frame_inds']))
        results['frame_inds'] = inds
        offset = results.get('offset', 0)

        def path(frame_idx: int) -> str:
            return osp.join(
                results['frame_dir'],
                results['filename_tmpl'].format(frame_idx + offset))

        data = self.file_client.get(path(inds[0]))
        size = jpeg_size(data)
        factor = reduction_factor(
            size, resize_output(size, self.scale, self.keep_ratio))
        decoded, imgs = {}, []
        for frame_idx in inds:
            if frame_idx not in decoded:
                if frame_idx != inds[0]:
                    data = self.file_client.get(path(frame_idx))
                decoded[frame_idx] = self._decode(data, factor)
                if decoded[frame_idx] is None:
                    raise ValueError(
                        f'cannot decode frame {frame_idx + offset} of '
                        f'{results["frame_dir"]}')
                imgs.append(decoded[frame_idx])
            else:
                imgs.append(decoded[frame_idx].copy())
        results['imgs'] = imgs
        results['original_shape'] = imgs[0].shape[:2]
        results['img_shape'] = imgs[0].shape[:2]
        return results

    @staticmethod
    def _decode(data: bytes, factor: int) -> Optional[np.ndarray]:
        """RGB frame of JPEG ``data`` at 1/``factor`` size; at full size
        as ``RawFrameDecode`` decodes it (the first frame is read once)."""
        if factor == 1:
            return mmcv.imfrombytes(data, channel_order='rgb', backend='cv2')
        img = cv2.imdecode(
            np.frombuffer(data, np.uint8), REDUCED_FLAGS[factor])
        return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(scale={self.scale}, '
                f'keep_ratio={self.keep_ratio}, '
                f'io_backend={self.io_backend})')


@TRANSFORMS.register_module()
class PreparedFrameInit(BaseTransform):
    """Point a sample at its frames in a prepared reduced-resolution copy.

    Replaces the video reader's init (``DecordInit`` and alike) or feeds
    ``RawFrameDecode`` another folder: the copy mirrors the source's
    relative paths under ``copy_root``, one folder of JPEG frames per video
    (``img_00001.jpg``, ... for a video source; the source's own file names
    for a rawframe source).

    Args:
        copy_root (str): Folder of the copy at one resolution.
        source_root (str): The dataset's data prefix (``data_prefix.video``
            or ``data_prefix.img``), to which the sample paths are relative.
        source (str): ``'video'`` or ``'rawframes'``.
        filename_tmpl (str): Frame file names of a copy made from videos.
            Defaults to ``'img_{:05}.jpg'``.
    """

    def __init__(self,
                 copy_root: str,
                 source_root: str,
                 source: str = 'video',
                 filename_tmpl: str = 'img_{:05}.jpg') -> None:
        if source not in ('video', 'rawframes'):
            raise ValueError("PreparedFrameInit.source must be 'video' or "
                             f"'rawframes', got {source!r}.")
        self.copy_root = copy_root
        self.source_root = source_root
        self.source = source
        self.filename_tmpl = filename_tmpl

    def transform(self, results: dict) -> dict:
        """Set ``frame_dir`` (and for videos the frame count and names)."""
        if self.source == 'video':
            rel = osp.splitext(
                osp.relpath(results['filename'], self.source_root))[0]
            folder = osp.join(self.copy_root, rel)
            results['frame_dir'] = folder
            results['total_frames'] = len(os.listdir(folder))
            results['filename_tmpl'] = self.filename_tmpl
            # Video frame indices start at 0, file numbers at 1.
            results['offset'] = results.get('offset', 0) + 1
            results.setdefault('modality', 'RGB')
        else:
            rel = osp.relpath(results['frame_dir'], self.source_root)
            results['frame_dir'] = osp.join(self.copy_root, rel)
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(copy_root={self.copy_root!r}, '
                f'source={self.source!r})')


def copy_folder(root: str, short_side: int) -> str:
    """Folder of a prepared copy at ``short_side`` pixels under ``root``."""
    return osp.join(root, f'short{short_side}')
