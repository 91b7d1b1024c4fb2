"""Annotations that cannot be trained on are reported when the dataset is built.

The real mmdet ``CocoDataset`` and mmseg ``ADE20KDataset`` / ``LoadAnnotations`` (as patched by
``import restv2_mm``) on small annotation files written here and on the project's tiny sets.
"""
import json
import logging
import os.path as osp

import cv2
import numpy as np
import pytest

import restv2_mm  # noqa: F401  (applies the checks)
from divergence_toy import captured_log
from restv2_mm.datasets.annotation_checks import AnnotationError, check_label_map
from restv2_mm.datasets.tiny_ade20k import make_tiny_ade20k
from restv2_mm.datasets.tiny_coco import COCO_CATEGORIES, make_tiny_coco

CLASSES = ('stop sign', 'kite')  # ids 13 and 38


def coco_dataset(ann_file, classes=CLASSES):
    """Build mmdet's CocoDataset (which loads the annotations); returns it and its warnings."""
    from mmdet.datasets import CocoDataset
    with captured_log(logging.WARNING) as capture:
        dataset = CocoDataset(ann_file=str(ann_file), data_prefix=dict(img='images/'),
                              metainfo=dict(classes=classes), pipeline=[])
    return dataset, capture.lines


def write_coco(path, annotations):
    images = [dict(id=1, file_name='a.jpg', width=100, height=80),
              dict(id=2, file_name='b.jpg', width=100, height=80)]
    categories = [dict(id=i, name=n) for i, n, _ in COCO_CATEGORIES]
    for i, ann in enumerate(annotations, start=1):
        ann.setdefault('id', i)
        ann.setdefault('image_id', 1)
        ann.setdefault('category_id', 13)
        ann.setdefault('iscrowd', 0)
        box = ann.setdefault('bbox', [10, 10, 20, 20])
        numbers = len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
        ann.setdefault('area', box[2] * box[3] if numbers else 1)
        ann.setdefault('segmentation', [[10, 10, 30, 10, 30, 30, 10, 30]])
    with open(path, 'w') as f:  # json writes nan / inf as NaN / Infinity, which it reads back
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return str(path)


@pytest.mark.parametrize('broken, message', [
    (dict(bbox=[10, float('nan'), 20, 20]), 'bbox [10, nan, 20, 20] has a non-finite coordinate'),
    (dict(bbox=[10, 10, float('inf'), 20]), 'bbox [10, 10, inf, 20] has a non-finite coordinate'),
    (dict(area=float('nan')), 'area nan is not finite'),
    (dict(segmentation=[[10, 10, 30, 10, 30, 30]] + [[1, 2, float('inf'), 3, 5, 6]]),
     'segmentation polygon 1 has a non-finite point (x, y) = (inf, 3) (point 1)'),
    (dict(segmentation=[[10, 10, float('nan'), 10, 30, 30]]),
     'segmentation polygon 0 has a non-finite point (x, y) = (nan, 10) (point 1)'),
    (dict(bbox=[10, None, 20, 20]),
     'bbox, area or segmentation holds a value that is not a number (bbox [10, None, 20, 20])'),
    (dict(bbox=[10, 10, 20]), 'bbox [10, 10, 20] is not [x, y, width, height]'),
])
def test_a_nonfinite_or_broken_annotation_is_an_error_naming_file_image_and_id(tmp_path, broken,
                                                                                 message):
    ann_file = write_coco(tmp_path / 'ann.json', [{}, {}, dict(image_id=2, id=7, **broken)])
    with pytest.raises(AnnotationError) as info:
        coco_dataset(ann_file)
    assert str(info.value) == f'{ann_file}: annotation id 7 of image id 2 (b.jpg): {message}'


def test_what_mmdet_leaves_out_is_summarised_in_one_warning(tmp_path):
    ann_file = write_coco(tmp_path / 'ann.json', [
        {}, dict(category_id=38), dict(image_id=2),                      # kept
        dict(bbox=[10, 10, 0.5, 20]), dict(bbox=[10, 10, 20, 20], area=0),  # degenerate
        dict(bbox=[150, 10, 20, 20]),                                   # outside its image
        dict(category_id=3), dict(category_id=3), dict(category_id=1),  # car, car, person
        dict(ignore=True),
    ])
    dataset, warnings = coco_dataset(ann_file)
    assert warnings == [
        f"{ann_file}: CocoDataset leaves out 7 of 10 annotations: 1 marked ignore; 1 outside "
        'their image (no overlap); 2 degenerate (width or height < 1, or area <= 0); 3 of '
        "category ids not in the config's classes [3 ('car') x 2, 1 ('person') x 1]. mmdet "
        "does this on purpose; if many are left out, check the config's metainfo.classes and "
        'the annotations.']
    # The same annotations are kept as without the check.
    kept = [(info['img_id'], instance['bbox'], instance['bbox_label'])
            for info in map(dataset.get_data_info, range(len(dataset)))
            for instance in info['instances']]
    assert kept == [(1, [10, 10, 30, 30], 0), (1, [10, 10, 30, 30], 1), (2, [10, 10, 30, 30], 0)]


def test_the_tiny_coco_set_loads_silently_and_a_class_typo_is_reported(tmp_path):
    from mmdet.datasets import CocoDataset
    files = make_tiny_coco(str(tmp_path), num_train=8, num_val=1)
    _, warnings = coco_dataset(files['train'], classes=CocoDataset.METAINFO['classes'])
    assert warnings == []
    # 'kites' instead of 'kite': every kite is left out, and the warning says so.
    _, warnings = coco_dataset(files['train'], classes=('stop sign', 'sports ball', 'kites',
                                                        'book'))
    assert len(warnings) == 1 and "of category ids not in the config's classes [38 ('kite') x" \
        in warnings[0], warnings


# ----------------------------------------------------------------------------- label maps
@pytest.fixture
def ade_set(tmp_path):
    make_tiny_ade20k(str(tmp_path), num_train=3, num_val=1, height_range=(40, 48),
                     width_range=(40, 56))
    return tmp_path


def ade_dataset(root, **kwargs):
    from mmseg.datasets import ADE20KDataset
    return ADE20KDataset(data_root=str(root),
                         data_prefix=dict(img_path='images/training',
                                          seg_map_path='annotations/training'),
                         pipeline=[dict(type='LoadImageFromFile'),
                                   dict(type='mmseg.LoadAnnotations')],
                         **kwargs)


def test_label_map_values_outside_the_classes_are_a_named_error(ade_set):
    path = osp.join(ade_set, 'annotations', 'training', 'ADE_train_00000002.png')
    label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    label[:2, :3] = 200  # 199 after reduce_zero_label: ADE20K has 150 classes
    label[5, 5] = 151    # 150: one past the last class
    cv2.imwrite(path, label)
    dataset = ade_dataset(ade_set)
    assert dataset[0]['gt_seg_map'].ndim == 2  # the others load
    with pytest.raises(AnnotationError) as info:
        dataset[1]
    assert str(info.value) == (
        f"label map {path} holds values that are neither a class (0-149, the config's 150 "
        'classes) nor an ignore value [255]: 150 (1 pixels), 199 (6 pixels) (stored as 151, '
        "200 before reduce_zero_label). Fix the label map, or the dataset's metainfo.classes / "
        'ignore_index.')
    # A class subset maps the other classes to 255 (ignored): still valid.
    subset = ade_dataset(ade_set, metainfo=dict(classes=('wall', 'building')))
    assert set(np.unique(subset[0]['gt_seg_map'])) <= {0, 1, 255}


def test_check_label_map_accepts_classes_and_ignore_and_wider_types():
    check_label_map(np.array([[0, 1], [2, 255]], np.uint8), 'm.png', 3, (255,))
    check_label_map(np.array([[0, 1], [2, 300]], np.int32), 'm.png', 3, (300,))
    with pytest.raises(AnnotationError, match=r'm\.png .*: 3 \(1 pixels\)\. Fix'):
        check_label_map(np.array([[0, 3]], np.int32), 'm.png', 3, (255,))
