"""Read and rewrite MMAction2 train pipelines for a multigrid shape.

Pure functions on pipeline configs (lists of dicts). A multigrid shape
changes the clip length and frame interval of the frame sampler (keeping the
temporal span) and every spatial size of the pipeline by the same ratio
(keeping the field of view), with the last size-setting transform giving the
exact target size. Shrinking the early resize too means smaller shapes decode
and process fewer pixels.
"""
import copy
from typing import List, Optional, Sequence, Tuple

Size = Tuple[int, int]

SAMPLERS = ('SampleFrames', 'DenseSampleFrames', 'UniformSample')
CROPS = ('CenterCrop', 'RandomCrop', 'MultiScaleCrop', 'ThreeCrop', 'TenCrop')
# Transforms that change the spatial size, and the argument holding it.
SIZE_ARGS = {
    'Resize': 'scale',
    'CenterCrop': 'crop_size',
    'RandomCrop': 'size',
    'MultiScaleCrop': 'input_size',
    'ThreeCrop': 'crop_size',
    'TenCrop': 'crop_size',
}


def _type(transform: dict) -> str:
    """Registered name of a transform config (class or string)."""
    kind = transform.get('type')
    return kind if isinstance(kind, str) else getattr(kind, '__name__', '')


def find_sampler(pipeline: Sequence[dict]) -> int:
    """Index of the frame sampler (``SampleFrames`` or alike).

    Raises:
        ValueError: if the pipeline has none, or one of ``clip_len <= 1``
            (a 2D recogniser's pipeline: multigrid does not apply).
    """
    found = [i for i, t in enumerate(pipeline) if _type(t) in SAMPLERS]
    if not found:
        raise ValueError(
            'multi_grid: train_dataloader.dataset.pipeline has no '
            'SampleFrames; multigrid changes its clip_len, add one.')
    sampler = pipeline[found[0]]
    if sampler.get('clip_len', 1) <= 1:
        raise ValueError(
            'multi_grid: the train pipeline samples 1-frame clips '
            f'({_type(sampler)}(clip_len={sampler.get("clip_len", 1)}, '
            f'num_clips={sampler.get("num_clips", 1)})): this is a 2D '
            'recogniser (TSN, TSM, ...) and multigrid does not apply; use a '
            '3D recogniser config or remove `multi_grid`.')
    return found[0]


def clip_params(pipeline: Sequence[dict]) -> Tuple[int, int]:
    """``(clip_len, frame_interval)`` of the pipeline's frame sampler."""
    sampler = pipeline[find_sampler(pipeline)]
    return int(sampler['clip_len']), int(sampler.get('frame_interval', 1))


def _wh(value) -> Size:
    """``(w, h)`` of an int or ``(w, h)`` size argument."""
    return (value, value) if isinstance(value, int) else tuple(value)


def _fixed_size(transform: dict) -> Optional[Size]:
    """``(h, w)`` a transform outputs regardless of its input, or None."""
    kind = _type(transform)
    if kind == 'Resize':
        scale = transform.get('scale')
        if (not transform.get('keep_ratio', True)
                and isinstance(scale, (tuple, list)) and min(scale) > 0):
            return int(scale[1]), int(scale[0])
        return None
    if kind in CROPS:
        w, h = _wh(transform[SIZE_ARGS[kind]])
        return int(h), int(w)
    return None


def _last_size_index(pipeline: Sequence[dict]) -> Optional[int]:
    """Index of the transform that sets the output size, if fixed."""
    last = None
    for i, transform in enumerate(pipeline):
        kind = _type(transform)
        if _fixed_size(transform) is not None:
            last = i
        elif kind in SIZE_ARGS or kind in ('RandomResizedCrop',
                                           'RandomRescale'):
            last = None
    return last


def output_size(pipeline: Sequence[dict]) -> Size:
    """Spatial ``(height, width)`` the pipeline outputs.

    Raises:
        ValueError: if the output size is not fixed (e.g. the pipeline ends
            with a keep-ratio ``Resize`` or a ``RandomResizedCrop``).
    """
    last = _last_size_index(pipeline)
    if last is None:
        raise ValueError(
            'multi_grid: the train pipeline has no fixed output size; '
            'end it with Resize(scale=(W, H), keep_ratio=False) or a '
            'crop of a fixed size equal to multi_grid.default_s.')
    return _fixed_size(pipeline[last])


def _scale_wh(value, fw: float, fh: float):
    """Scale a ``(w, h)`` pair or int size; ``-1`` stays ``-1``."""
    if isinstance(value, int):
        return max(1, int(round(value * min(fw, fh))))
    w, h = value
    return (w if w == -1 else max(1, int(round(w * fw))),
            h if h == -1 else max(1, int(round(h * fh))))


def _scale_transform(transform: dict, fw: float, fh: float) -> dict:
    """Copy of ``transform`` with its spatial size scaled."""
    kind = _type(transform)
    new = dict(transform)
    if kind == 'Resize':
        scale = transform['scale']
        if isinstance(scale, float):
            new['scale'] = scale * min(fw, fh)
        elif transform.get('keep_ratio', True):
            # (-1, 256) or (long, short): a bound, scale both alike.
            f = min(fw, fh)
            new['scale'] = tuple(s if s == -1 else max(1, int(round(s * f)))
                                 for s in scale)
        else:
            new['scale'] = _scale_wh(tuple(scale), fw, fh)
    elif kind in CROPS:
        key = SIZE_ARGS[kind]
        new[key] = _scale_wh(transform[key], fw, fh)
    return new


def _set_size(transform: dict, size: Size) -> dict:
    """Copy of a fixed-size transform that outputs exactly ``(h, w)``."""
    kind = _type(transform)
    h, w = size
    new = dict(transform)
    if kind == 'RandomCrop':
        if h != w:
            raise ValueError(
                'multi_grid.default_s: RandomCrop only makes square crops; '
                f'cannot make {size}. Use CenterCrop/MultiScaleCrop or a '
                'final Resize(keep_ratio=False).')
        new['size'] = h
    else:
        new[SIZE_ARGS[kind]] = (w, h)
    return new


def reshape_pipeline(pipeline: Sequence[dict], clip_len: int,
                     frame_interval: Optional[int], size: Size) -> List[dict]:
    """Pipeline config producing clips of another shape.

    Args:
        pipeline: The stock train pipeline (list of transform configs).
        clip_len: Frames per clip.
        frame_interval: Frame interval, or None to keep the stock one.
        size: Output ``(height, width)``.

    Returns:
        list[dict]: A new pipeline config; ``pipeline`` is not modified.
    """
    default = output_size(pipeline)
    fh, fw = size[0] / default[0], size[1] / default[1]
    last = _last_size_index(pipeline)
    index = find_sampler(pipeline)
    new = [copy.deepcopy(t) for t in pipeline]
    new[index]['clip_len'] = clip_len
    if frame_interval is not None and _type(new[index]) != 'UniformSample':
        new[index]['frame_interval'] = frame_interval
    for i, transform in enumerate(new):
        if i == last:
            new[i] = _set_size(transform, size)
        elif _type(transform) in SIZE_ARGS:
            new[i] = _scale_transform(transform, fw, fh)
    return new


def absorb_format(pipeline: Sequence[dict]) -> Tuple[List[dict], bool]:
    """Map a 0.x-tutorial ``FormatShape(input_format='CTHW')`` to NCTHW.

    Returns:
        tuple[list[dict], bool]: the pipeline and whether it changed.
    """
    new, changed = [], False
    for transform in pipeline:
        if (_type(transform) == 'FormatShape'
                and transform.get('input_format') == 'CTHW'):
            transform = dict(transform, input_format='NCTHW')
            changed = True
        new.append(transform)
    return new, changed


def check_format(pipeline: Sequence[dict]) -> None:
    """Raise if the pipeline does not format clips for a 3D recogniser."""
    for transform in pipeline:
        if _type(transform) == 'FormatShape':
            fmt = transform.get('input_format')
            if fmt != 'NCTHW':
                raise ValueError(
                    'multi_grid: the train pipeline formats clips as '
                    f"FormatShape(input_format='{fmt}'); multigrid needs "
                    "a 3D recogniser fed with input_format='NCTHW'.")


# ------------------------------------------------------------ data path --
VIDEO_READERS = {
    'DecordInit': 'DecordDecode',
    'PyAVInit': 'PyAVDecode',
    'OpenCVInit': 'OpenCVDecode'
}


def _decode_index(pipeline: Sequence[dict]) -> Optional[int]:
    """Index of the frame decoder (video or rawframes), or None."""
    decoders = set(VIDEO_READERS.values()) | {'RawFrameDecode'}
    found = [i for i, t in enumerate(pipeline) if _type(t) in decoders]
    return found[0] if found else None


def decode_resize(pipeline: Sequence[dict]) -> Optional[dict]:
    """The ``Resize`` right after the decoder, or None.

    Only a resize that comes before any crop or other size change fixes how
    large a decoded frame must be.
    """
    index = _decode_index(pipeline)
    if index is None:
        return None
    for transform in pipeline[index + 1:]:
        kind = _type(transform)
        if kind == 'Resize':
            return transform
        if kind in SIZE_ARGS or kind in ('RandomResizedCrop', 'RandomRescale'):
            return None
    return None


def decode_short_side(pipeline: Sequence[dict]) -> Optional[int]:
    """Short side that the resize after decoding asks for, if it is one.

    ``Resize(scale=(-1, s))`` (or ``(s, -1)``) with ``keep_ratio`` asks for
    a short side of ``s``; any other resize gives None.
    """
    resize = decode_resize(pipeline)
    if resize is None or not resize.get('keep_ratio', True):
        return None
    scale = resize.get('scale')
    if isinstance(scale, (tuple, list)) and sorted(scale)[0] == -1:
        return int(max(scale))
    return None


def random_interval(pipeline: Sequence[dict], stock_interval: int,
                    stock_clip_len: int) -> List[dict]:
    """Draw the frame interval per clip, as the multigrid authors do.

    At a shape of ``t < T`` frames whose ``SampleFrames`` has interval
    ``r*T/t``, the sampler becomes ``RandomIntervalSampleFrames`` drawing
    from ``[r, r*T/t]``; at ``t >= T`` the pipeline is unchanged.

    Args:
        pipeline: A reshaped pipeline config.
        stock_interval: ``r`` of the stock pipeline.
        stock_clip_len: ``T`` of the stock pipeline.

    Returns:
        list[dict]: A new pipeline config.
    """
    new = [dict(t) for t in pipeline]
    index = find_sampler(new)
    sampler = new[index]
    high = int(sampler.get('frame_interval', 1))
    if (_type(sampler) != 'SampleFrames'
            or sampler['clip_len'] >= stock_clip_len
            or high <= stock_interval):
        return new
    sampler = dict(
        sampler,
        type='RandomIntervalSampleFrames',
        interval_range=(stock_interval, high))
    sampler.pop('frame_interval', None)
    new[index] = sampler
    return new


def reduced_decode(pipeline: Sequence[dict]) -> List[dict]:
    """Decode JPEG frames at a reduced size where the next resize allows.

    ``RawFrameDecode`` followed by a ``Resize`` becomes
    ``ReducedRawFrameDecode`` with that resize's arguments; anything else is
    unchanged.

    Args:
        pipeline: A pipeline config.

    Returns:
        list[dict]: A new pipeline config.
    """
    new = [dict(t) for t in pipeline]
    index = _decode_index(new)
    resize = decode_resize(new)
    if index is None or resize is None or _type(
            new[index]) != 'RawFrameDecode' or (new[index].get(
                'decoding_backend', 'cv2') != 'cv2'):
        return new
    decode = dict(
        new[index],
        type='ReducedRawFrameDecode',
        scale=resize['scale'],
        keep_ratio=resize.get('keep_ratio', True))
    decode.pop('decoding_backend', None)
    new[index] = decode
    return new


def select_copy(pipeline: Sequence[dict],
                short_sides: Sequence[int]) -> Optional[int]:
    """Short side of the smallest prepared copy a pipeline can read.

    Args:
        pipeline: A reshaped pipeline config.
        short_sides: Short sides of the prepared copies.

    Returns:
        int | None: The smallest copy at least as large as the resize after
        decoding asks for (so nothing is upsampled), or None when no copy
        is large enough or the pipeline's resize is not a short-side one.
    """
    wanted = decode_short_side(pipeline)
    if wanted is None:
        return None
    usable = [s for s in short_sides if s >= wanted]
    return min(usable) if usable else None


def read_copy(pipeline: Sequence[dict], copy_root: str, source_root: str,
              source: str) -> List[dict]:
    """Read frames from a prepared copy instead of the source.

    The video reader's init becomes ``PreparedFrameInit`` and its decoder
    ``RawFrameDecode``; a rawframe pipeline gets ``PreparedFrameInit`` first.

    Args:
        pipeline: A pipeline config.
        copy_root: Folder of the copy at the chosen resolution.
        source_root: The dataset's data prefix.
        source: ``'video'`` or ``'rawframes'``.

    Returns:
        list[dict]: A new pipeline config.
    """
    init = dict(
        type='PreparedFrameInit',
        copy_root=copy_root,
        source_root=source_root,
        source=source)
    new = []
    for transform in pipeline:
        kind = _type(transform)
        if kind in VIDEO_READERS:
            new.append(init)
        elif kind in VIDEO_READERS.values():
            new.append(dict(type='RawFrameDecode'))
        else:
            new.append(dict(transform))
    if source == 'rawframes':
        new.insert(0, init)
    return new
