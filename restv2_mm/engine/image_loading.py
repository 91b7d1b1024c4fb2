"""Image loading that names the file and the problem, for every mm pipeline.

mmcv 2.1's ``LoadImageFromFile`` turns a zero-byte file into an OpenCV assertion without the file
name, and raises even with ``ignore_empty=True`` when the decoder returns nothing (a truncated
JPEG or PNG, a text file). Some decoders also return a partial image for a truncated JPEG. The
patched ``transform`` (applied by ``import restv2_mm``) checks the bytes first and then either
raises :class:`CorruptImageError` naming the image, or, with the mm-standard opt-in
``LoadImageFromFile(ignore_empty=True)``, logs a warning naming it and returns None, which makes a
training dataset draw another image (mmengine ``BaseDataset``; a test dataset still stops).

Orientation: with the default ``color_type='color'`` both the OpenCV and the Pillow backend
apply a JPEG's EXIF orientation (the image is seen as a viewer shows it), and so does
``mmcv.imread`` which the inferencers use to draw results, so pipeline and drawing agree;
``color_type='unchanged'`` / ``'color_ignore_orientation'`` keep the stored pixel layout.
"""
from typing import Optional

import mmcv
import numpy as np
from mmengine import fileio
from mmengine.logging import print_log


class CorruptImageError(OSError):
    """An image (or label map) file that cannot be decoded; the message names the file."""


SKIP_HINT = ('To skip unreadable images while training instead, set ignore_empty=True on the '
             "pipeline's LoadImageFromFile, e.g. --cfg-options "
             'train_dataloader.dataset.pipeline.0.ignore_empty=True')


def _jpeg_truncated(data: bytes) -> bool:
    """True if no end-of-image marker follows the first scan of the main image.

    Walks the marker segments by their lengths (so an EXIF thumbnail, which is a whole JPEG
    inside APP1, is stepped over) up to the first start-of-scan; after it, 0xFFD9 can only be the
    end-of-image marker (entropy-coded data escapes 0xFF as 0xFF00).
    """
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False  # not a marker layout we understand: leave it to the decoder
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], 'big')
        if marker == 0xDA:  # start of scan
            return data.find(b'\xff\xd9', pos + 2 + length) < 0
        pos += 2 + length
    return True  # ended before any scan


def image_bytes_problem(data: bytes) -> Optional[str]:
    """What is wrong with an encoded image (a phrase), or None if it looks complete."""
    if len(data) == 0:
        return 'is empty (0 bytes)'
    if data.startswith(b'\xff\xd8\xff'):
        if _jpeg_truncated(data):
            return f'is a truncated JPEG ({len(data)} bytes, no end-of-image marker)'
    elif data.startswith(b'\x89PNG\r\n\x1a\n'):
        if data.rfind(b'IEND') < 0:
            return f'is a truncated PNG ({len(data)} bytes, no IEND chunk)'
    return None


def decode_image(data: bytes, flag: str = 'color', backend: Optional[str] = None):
    """``mmcv.imfrombytes`` that returns (image, None) or (None, problem)."""
    problem = image_bytes_problem(data)
    if problem is not None:
        return None, problem
    try:
        img = mmcv.imfrombytes(data, flag=flag, backend=backend)
    except Exception as err:  # decoders raise assorted types
        return None, f'could not be decoded ({type(err).__name__}: {err})'
    if img is None or img.size == 0:
        return None, 'could not be decoded (not an image, or a corrupt one)'
    return img, None


def _read(transform, filename: str) -> bytes:
    if transform.file_client_args is not None:
        client = fileio.FileClient.infer_client(transform.file_client_args, filename)
        return client.get(filename)
    return fileio.get(filename, backend_args=transform.backend_args)


def load_image_from_file(self, results: dict) -> Optional[dict]:
    """``LoadImageFromFile.transform`` with named errors (same keys, flags and opt-in)."""
    filename = results['img_path']
    try:
        data = _read(self, filename)
    except FileNotFoundError:
        if self.ignore_empty:
            print_log(f'Skipping image {filename}: it does not exist (ignore_empty=True).',
                      logger='current', level=30)
            return None
        raise FileNotFoundError(f'image {filename} does not exist') from None
    img, problem = decode_image(data, flag=self.color_type, backend=self.imdecode_backend)
    if problem is not None:
        if self.ignore_empty:
            print_log(f'Skipping image {filename}: it {problem} (ignore_empty=True).',
                      logger='current', level=30)
            return None
        raise CorruptImageError(f'image {filename} {problem}. {SKIP_HINT}')
    if self.to_float32:
        img = img.astype(np.float32)
    results['img'] = img
    results['img_shape'] = img.shape[:2]
    results['ori_shape'] = img.shape[:2]
    return results


def load_seg_map(self, results: dict) -> None:
    """mmseg's ``LoadAnnotations._load_seg_map`` with two differences: a file that cannot be read
    raises an error naming it, and the map keeps its (H, W) when one side is a single pixel
    (mmseg squeezes every singleton dimension, so a 1x1 map became a scalar and failed).

    Adds ``results['gt_seg_map']`` (H, W) uint8, with ``reduce_zero_label`` (0 -> 255 ignore,
    k -> k - 1) and the dataset's ``label_map`` applied as mmseg does.
    """
    path = results['seg_map_path']
    try:
        data = fileio.get(path, backend_args=self.backend_args)
    except FileNotFoundError:
        raise FileNotFoundError(f'label map {path} does not exist') from None
    seg_map, problem = decode_image(data, flag='unchanged', backend=self.imdecode_backend)
    if problem is not None:
        raise CorruptImageError(f'label map {path} {problem}')
    if seg_map.ndim == 3 and seg_map.shape[2] == 1:
        seg_map = seg_map[..., 0]
    if seg_map.ndim != 2:
        raise CorruptImageError(f'label map {path} has shape {seg_map.shape}: expected one '
                                'channel of class indices (H, W)')
    seg_map = seg_map.astype(np.uint8)

    if self.reduce_zero_label is None:
        self.reduce_zero_label = results['reduce_zero_label']
    if self.reduce_zero_label != results['reduce_zero_label']:
        raise ValueError(f'LoadAnnotations(reduce_zero_label={self.reduce_zero_label}) does not '
                         f"match the dataset's reduce_zero_label={results['reduce_zero_label']}")
    if self.reduce_zero_label:  # 0 ("other") becomes the ignore index, the classes move down
        seg_map = np.where(seg_map == 0, 255, seg_map - 1).astype(np.uint8)
        seg_map[seg_map == 254] = 255
    label_map = results.get('label_map')
    if label_map is not None:
        original = seg_map.copy()
        for old_id, new_id in label_map.items():
            seg_map[original == old_id] = new_id
    results['gt_seg_map'] = seg_map
    results['seg_fields'].append('gt_seg_map')


def make_image_loading_explicit() -> None:
    """Patch mmcv's ``LoadImageFromFile`` (used by mmdet, mmseg and their inferencers) and
    mmseg's label-map loading to raise errors that name the file."""
    from mmcv.transforms import LoadImageFromFile
    if not getattr(LoadImageFromFile.transform, '_restv2_named', False):
        load_image_from_file._restv2_named = True
        LoadImageFromFile.transform = load_image_from_file
    try:
        from mmseg.datasets.transforms import LoadAnnotations
    except ImportError:  # mmseg is optional for detection-only installs
        return
    LoadAnnotations._load_seg_map = load_seg_map
