"""Annotations that cannot be trained on are reported when the dataset is built, not dropped.

MMDetection's ``CocoDataset`` (3.3) leaves annotations out without a word: a box outside its
image, a degenerate one (width or height below 1, or area <= 0), one of a category that is not
among the config's ``classes`` (a mistyped class list drops most of a data set), and one marked
``ignore``. A box with a nan coordinate is dropped only because ``max(0, nan)`` is 0 in Python,
and polygon points are never looked at. With :func:`make_annotation_checks_explicit` (applied
by ``import restv2_mm``):

* a non-finite (or non-numeric) box coordinate, area or polygon point raises
  :class:`AnnotationError` naming the annotation file, the image and the annotation id;
* what mmdet leaves out on purpose is counted per reason and summarised in one warning per
  annotation file, when the dataset is built (the category ids outside the classes are listed
  with their names and counts). Nothing else changes: the same annotations are kept.

MMSegmentation label maps: a pixel value that is neither one of the config's classes nor an
ignore value (the dataset's ``ignore_index``, and 255 where mmseg writes it itself for
``reduce_zero_label`` / a class subset) raises :class:`AnnotationError` naming the file and the
values, when the map is loaded. The check is one 256-bin histogram of the loaded map; the
dataset's class count travels with each sample (``get_data_info``), so a map loaded outside a
dataset is not checked.
"""
import math
from collections import Counter
from typing import Optional

import cv2
import numpy as np
from mmengine.logging import print_log

# mmdet's reasons, in the order mmdet applies them; each dropped annotation counts once.
DROP_REASONS = {
    'ignore': 'marked ignore',
    'outside': 'outside their image (no overlap)',
    'degenerate': 'degenerate (width or height < 1, or area <= 0)',
    'category': "of category ids not in the config's classes",
}
SEG_KEY = 'restv2_label_check'  # (number of classes, ignore values) added to each sample


class AnnotationError(ValueError):
    """An annotation that cannot be trained on; the message names the file, image and id."""


# ----------------------------------------------------------------------------- detection
def _where(dataset, image: dict, ann: dict) -> str:
    return (f"{dataset.ann_file}: annotation id {ann.get('id')} of image id "
            f"{image.get('img_id', image.get('id'))} ({image.get('file_name')})")


def _not_finite(values) -> bool:
    """True if any number is nan or inf (their sum is then nan or inf: one C loop per list,
    which keeps COCO's ~1M annotations fast); raises TypeError for a non-number."""
    return not math.isfinite(sum(values))


def check_coco_annotation(dataset, image: dict, ann: dict) -> Optional[str]:
    """Raise :class:`AnnotationError` for a non-finite box, area or polygon; otherwise return
    the reason mmdet's ``CocoDataset.parse_data_info`` leaves ``ann`` out (a ``DROP_REASONS``
    key), or None when it is kept."""
    box = ann.get('bbox')
    try:
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise AnnotationError(f'{_where(dataset, image, ann)}: bbox {box!r} is not '
                                  '[x, y, width, height]')
        if _not_finite(box):
            raise AnnotationError(f'{_where(dataset, image, ann)}: bbox {list(box)} has a '
                                  'non-finite coordinate')
        if _not_finite([ann.get('area', 0)]):
            raise AnnotationError(f"{_where(dataset, image, ann)}: area {ann['area']} is not "
                                  'finite')
        segmentation = ann.get('segmentation')
        if isinstance(segmentation, list):  # polygons; RLE dicts hold counts, not points
            for index, polygon in enumerate(segmentation):
                if _not_finite(polygon):
                    raise AnnotationError(
                        f'{_where(dataset, image, ann)}: segmentation polygon {index} has a '
                        f'non-finite point {_first_bad_point(polygon)}')
    except TypeError:
        raise AnnotationError(f'{_where(dataset, image, ann)}: bbox, area or segmentation holds '
                              f"a value that is not a number (bbox {box!r})") from None
    missing = [key for key in ('area', 'category_id') if key not in ann]
    if missing:
        raise AnnotationError(f'{_where(dataset, image, ann)}: has no {" or ".join(missing)}')
    if ann.get('ignore', False):
        return 'ignore'
    x, y, width, height = box
    overlap_w = max(0, min(x + width, image['width']) - max(x, 0))
    overlap_h = max(0, min(y + height, image['height']) - max(y, 0))
    if overlap_w * overlap_h == 0:
        return 'outside'
    if ann['area'] <= 0 or width < 1 or height < 1:
        return 'degenerate'
    if ann['category_id'] not in dataset.cat_ids:
        return 'category'
    return None


def _first_bad_point(polygon) -> str:
    for i in range(0, len(polygon) - 1, 2):
        x, y = polygon[i], polygon[i + 1]
        if not (isinstance(x, (int, float)) and isinstance(y, (int, float))
                and math.isfinite(x) and math.isfinite(y)):
            return f'(x, y) = ({x}, {y}) (point {i // 2})'
    return f'(values {polygon})'


class _DropReport:
    """Counts of what one ``load_data_list`` call left out, for the summary warning."""

    def __init__(self):
        self.total = 0
        self.reasons = Counter()
        self.categories = Counter()
        self.names = {}

    def add(self, dataset, ann: dict, reason: Optional[str]) -> None:
        self.total += 1
        if reason is not None:
            self.reasons[reason] += 1
            if reason == 'category':
                category = ann['category_id']
                self.categories[category] += 1
                if category not in self.names:  # mmdet deletes dataset.coco after loading
                    self.names[category] = dataset.coco.cats.get(category, {}).get('name', '?')

    def warning(self, dataset) -> Optional[str]:
        dropped = sum(self.reasons.values())
        if not dropped:
            return None
        parts = []
        for reason, text in DROP_REASONS.items():
            if self.reasons[reason]:
                part = f'{self.reasons[reason]} {text}'
                if reason == 'category':
                    listed = ', '.join(f'{cat} ({self.names[cat]!r}) x {count}'
                                       for cat, count in self.categories.most_common(10))
                    more = len(self.categories) - 10
                    part += f' [{listed}{f" and {more} more" if more > 0 else ""}]'
                parts.append(part)
        return (f'{dataset.ann_file}: {type(dataset).__name__} leaves out {dropped} of '
                f'{self.total} annotations: {"; ".join(parts)}. mmdet does this on purpose; '
                "if many are left out, check the config's metainfo.classes and the annotations.")


def _patch_coco_dataset() -> None:
    try:
        from mmdet.datasets import CocoDataset
    except ImportError:  # mmdet is optional for segmentation-only installs
        return
    if getattr(CocoDataset.parse_data_info, '_restv2_checked', False):
        return
    parse_data_info, load_data_list = CocoDataset.parse_data_info, CocoDataset.load_data_list

    def checked_parse_data_info(self, raw_data_info: dict):
        image = raw_data_info['raw_img_info']
        report = getattr(self, '_restv2_drop_report', None)
        for ann in raw_data_info['raw_ann_info']:
            reason = check_coco_annotation(self, image, ann)
            if report is not None:
                report.add(self, ann, reason)
        return parse_data_info(self, raw_data_info)

    def reported_load_data_list(self):
        self._restv2_drop_report = report = _DropReport()
        try:
            data_list = load_data_list(self)
        finally:
            self._restv2_drop_report = None
        message = report.warning(self)
        if message:
            print_log(message, logger='current', level=30)
        return data_list

    _replace(CocoDataset, 'parse_data_info', checked_parse_data_info, parse_data_info)
    _replace(CocoDataset, 'load_data_list', reported_load_data_list, load_data_list)


def _replace(cls: type, name: str, new, old) -> None:
    """``cls.name = new``, marked as checked and keeping ``old``'s docstring."""
    new.__doc__, new.__wrapped__, new._restv2_checked = old.__doc__, old, True
    setattr(cls, name, new)


# ----------------------------------------------------------------------------- segmentation
def label_check_of(dataset) -> tuple:
    """``(number of classes, ignore values)`` of an mmseg dataset's label maps after loading."""
    ignore = {int(getattr(dataset, 'ignore_index', 255))}
    if getattr(dataset, 'reduce_zero_label', False) or getattr(dataset, 'label_map', None):
        ignore.add(255)  # mmseg's own ignore value for these two
    return len(dataset.metainfo.get('classes') or ()), tuple(sorted(ignore))


def check_label_map(seg_map: np.ndarray, path: str, num_classes: int, ignore: tuple,
                    reduce_zero_label: bool = False) -> None:
    """Raise :class:`AnnotationError` if ``seg_map`` (H, W) uint8, as loaded (after
    ``reduce_zero_label`` and the dataset's label map), holds a value that is neither a class
    index ``0..num_classes-1`` nor one of ``ignore``."""
    if seg_map.dtype == np.uint8:  # a 256-bin histogram: one fast pass over the map
        allowed = np.zeros(256, dtype=bool)
        allowed[:num_classes] = True
        allowed[[v for v in ignore if 0 <= v < 256]] = True
        histogram = cv2.calcHist([np.ascontiguousarray(seg_map)], [0], None, [256],
                                 [0, 256]).ravel()
        values = np.flatnonzero((histogram > 0) & ~allowed)
        counts = histogram[values].astype(np.int64)
    else:  # another loader's wider type
        valid = ((seg_map >= 0) & (seg_map < num_classes)) | np.isin(seg_map, ignore)
        values, counts = np.unique(seg_map[~valid], return_counts=True)
    if not len(values):
        return
    listed = ', '.join(f'{v} ({c} pixels)' for v, c in zip(values.tolist(), counts.tolist()))
    stored = (f' (stored as {", ".join(str(v + 1) for v in values.tolist())} before '
              'reduce_zero_label)' if reduce_zero_label else '')
    raise AnnotationError(
        f'label map {path} holds values that are neither a class (0-{num_classes - 1}, the '
        f"config's {num_classes} classes) nor an ignore value {list(ignore)}: {listed}{stored}. "
        "Fix the label map, or the dataset's metainfo.classes / ignore_index.")


def _patch_seg_datasets() -> None:
    try:
        from mmcv.transforms import LoadAnnotations as MMCVLoadAnnotations
        from mmseg.datasets import BaseSegDataset
        from mmseg.datasets.transforms import LoadAnnotations
    except ImportError:  # mmseg is optional for detection-only installs
        return
    if getattr(BaseSegDataset.get_data_info, '_restv2_checked', False):
        return
    get_data_info = BaseSegDataset.get_data_info
    transform = LoadAnnotations.__dict__.get('transform', MMCVLoadAnnotations.transform)

    def get_data_info_with_label_check(self, idx: int) -> dict:
        info = get_data_info(self, idx)
        info[SEG_KEY] = label_check_of(self)
        return info

    def checked_transform(self, results: dict):
        results = transform(self, results)
        if results is not None and 'gt_seg_map' in results and SEG_KEY in results:
            num_classes, ignore = results[SEG_KEY]
            check_label_map(results['gt_seg_map'], results.get('seg_map_path'), num_classes,
                            ignore, bool(results.get('reduce_zero_label')))
        return results

    _replace(BaseSegDataset, 'get_data_info', get_data_info_with_label_check, get_data_info)
    _replace(LoadAnnotations, 'transform', checked_transform, transform)


def make_annotation_checks_explicit() -> None:
    """Apply the checks of this module's docstring to mmdet's ``CocoDataset`` and mmseg's
    datasets and ``LoadAnnotations`` (idempotent; either library may be absent)."""
    _patch_coco_dataset()
    _patch_seg_datasets()
