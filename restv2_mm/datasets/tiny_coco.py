"""A tiny synthetic, learnable data set in the real COCO instance-segmentation layout.

    OUT_DIR/annotations/instances_train2017.json   OUT_DIR/train2017/*.jpg
    OUT_DIR/annotations/instances_val2017.json     OUT_DIR/val2017/*.jpg

The annotation files list all 80 COCO categories with their real, non-contiguous ids, so an
unchanged ``CocoDataset`` / ``CocoMetric`` config reads them. Each image holds one to three
objects on a textured background; every object is one instance with a polygon mask. Four COCO
categories are drawn and each has its own look (shape and colour), so the class of an object
is decided by its appearance and a detector trained from scratch learns the set in minutes:

    stop sign (13)    red octagon
    sports ball (37)  orange disc
    kite (38)         green diamond
    book (84)         blue upright rectangle

Train and val images come from one seeded generator, val after train: the val split is
held out (never trained on) and the same seed always writes the same files.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

# (id, name, supercategory) of COCO 2017, in the order of the official annotation files.
COCO_CATEGORIES: Tuple[Tuple[int, str, str], ...] = (
    (1, 'person', 'person'), (2, 'bicycle', 'vehicle'), (3, 'car', 'vehicle'),
    (4, 'motorcycle', 'vehicle'), (5, 'airplane', 'vehicle'), (6, 'bus', 'vehicle'),
    (7, 'train', 'vehicle'), (8, 'truck', 'vehicle'), (9, 'boat', 'vehicle'),
    (10, 'traffic light', 'outdoor'), (11, 'fire hydrant', 'outdoor'),
    (13, 'stop sign', 'outdoor'), (14, 'parking meter', 'outdoor'), (15, 'bench', 'outdoor'),
    (16, 'bird', 'animal'), (17, 'cat', 'animal'), (18, 'dog', 'animal'),
    (19, 'horse', 'animal'), (20, 'sheep', 'animal'), (21, 'cow', 'animal'),
    (22, 'elephant', 'animal'), (23, 'bear', 'animal'), (24, 'zebra', 'animal'),
    (25, 'giraffe', 'animal'), (27, 'backpack', 'accessory'), (28, 'umbrella', 'accessory'),
    (31, 'handbag', 'accessory'), (32, 'tie', 'accessory'), (33, 'suitcase', 'accessory'),
    (34, 'frisbee', 'sports'), (35, 'skis', 'sports'), (36, 'snowboard', 'sports'),
    (37, 'sports ball', 'sports'), (38, 'kite', 'sports'), (39, 'baseball bat', 'sports'),
    (40, 'baseball glove', 'sports'), (41, 'skateboard', 'sports'), (42, 'surfboard', 'sports'),
    (43, 'tennis racket', 'sports'), (44, 'bottle', 'kitchen'), (46, 'wine glass', 'kitchen'),
    (47, 'cup', 'kitchen'), (48, 'fork', 'kitchen'), (49, 'knife', 'kitchen'),
    (50, 'spoon', 'kitchen'), (51, 'bowl', 'kitchen'), (52, 'banana', 'food'),
    (53, 'apple', 'food'), (54, 'sandwich', 'food'), (55, 'orange', 'food'),
    (56, 'broccoli', 'food'), (57, 'carrot', 'food'), (58, 'hot dog', 'food'),
    (59, 'pizza', 'food'), (60, 'donut', 'food'), (61, 'cake', 'food'),
    (62, 'chair', 'furniture'), (63, 'couch', 'furniture'), (64, 'potted plant', 'furniture'),
    (65, 'bed', 'furniture'), (67, 'dining table', 'furniture'), (70, 'toilet', 'furniture'),
    (72, 'tv', 'electronic'), (73, 'laptop', 'electronic'), (74, 'mouse', 'electronic'),
    (75, 'remote', 'electronic'), (76, 'keyboard', 'electronic'),
    (77, 'cell phone', 'electronic'), (78, 'microwave', 'appliance'),
    (79, 'oven', 'appliance'), (80, 'toaster', 'appliance'), (81, 'sink', 'appliance'),
    (82, 'refrigerator', 'appliance'), (84, 'book', 'indoor'), (85, 'clock', 'indoor'),
    (86, 'vase', 'indoor'), (87, 'scissors', 'indoor'), (88, 'teddy bear', 'indoor'),
    (89, 'hair drier', 'indoor'), (90, 'toothbrush', 'indoor'))

# Drawn category -> (COCO id, polygon in the unit square [-1, 1]^2, base RGB colour).
def _regular_polygon(sides: int, rotation: float) -> List[Tuple[float, float]]:
    angles = np.linspace(0, 2 * np.pi, sides, endpoint=False) + rotation
    return list(zip(np.cos(angles), np.sin(angles)))


TINY_CATEGORIES: Dict[str, Tuple[int, List[Tuple[float, float]], Tuple[int, int, int]]] = {
    'stop sign': (13, _regular_polygon(8, np.pi / 8), (210, 40, 40)),
    'sports ball': (37, _regular_polygon(32, 0.0), (240, 150, 30)),
    'kite': (38, [(0, -1), (1, 0), (0, 1), (-1, 0)], (40, 190, 70)),
    'book': (84, [(-0.6, -1), (0.6, -1), (0.6, 1), (-0.6, 1)], (50, 90, 220)),
}


def _polygon_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def make_image(rng: np.random.Generator, width: int, height: int,
               max_objects: int = 3) -> Tuple[np.ndarray, List[dict]]:
    """One RGB image (H, W, 3) with 1..max_objects shapes and their COCO annotations.

    Objects sit in different cells of a 2x2 grid, so they never overlap (clean masks).
    """
    # Grey, blurred noise: no colour of its own, so colour is always an object cue.
    image = rng.integers(70, 140, size=(height, width, 1), dtype=np.uint8).repeat(3, axis=2)
    image = cv2.GaussianBlur(image, (5, 5), 0)
    cells = [(col, row) for row in range(2) for col in range(2)]
    rng.shuffle(cells)
    names = list(TINY_CATEGORIES)
    annotations = []
    for col, row in cells[:int(rng.integers(1, max_objects + 1))]:
        name = names[int(rng.integers(len(names)))]
        category_id, unit_polygon, colour = TINY_CATEGORIES[name]
        cell_w, cell_h = width / 2, height / 2
        half = rng.uniform(0.28, 0.44) * min(cell_w, cell_h)
        half_w, half_h = half * rng.uniform(0.85, 1.15), half * rng.uniform(0.85, 1.15)
        cx = (col + 0.5) * cell_w + rng.uniform(-0.08, 0.08) * cell_w
        cy = (row + 0.5) * cell_h + rng.uniform(-0.08, 0.08) * cell_h
        polygon = np.array([(cx + x * half_w, cy + y * half_h) for x, y in unit_polygon])
        jitter = rng.integers(-25, 26, size=3)
        cv2.fillPoly(image, [np.round(polygon).astype(np.int32)],
                     tuple(int(c) for c in np.clip(np.array(colour) + jitter, 0, 255)))
        x0, y0 = polygon.min(axis=0)
        x1, y1 = polygon.max(axis=0)
        annotations.append(dict(
            category_id=category_id,
            segmentation=[[round(float(v), 2) for v in polygon.reshape(-1)]],
            area=round(_polygon_area(polygon), 2),
            bbox=[round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2),
                  round(float(y1 - y0), 2)],
            iscrowd=0))
    noise = rng.normal(0, 6, size=image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), annotations


def _write_split(out_dir: str, split: str, num_images: int, image_size: Sequence[int],
                 rng: np.random.Generator, first_image_id: int) -> Dict:
    width, height = image_size
    image_dir = osp.join(out_dir, f'{split}2017')
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        image_id = first_image_id + index
        file_name = f'{image_id:012d}.jpg'
        image, objects = make_image(rng, width, height)
        path = osp.join(image_dir, file_name)
        # cv2 writes BGR; the JPEG then holds the RGB colours listed above.
        if not cv2.imwrite(path, image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise OSError(f'could not write {path}')
        images.append(dict(id=image_id, file_name=file_name, width=width, height=height))
        for obj in objects:
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, **obj))
    coco = dict(
        info=dict(description=f'restv2_mm tiny synthetic COCO ({split})', version='2.0',
                  year=2017),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[dict(id=i, name=n, supercategory=s) for i, n, s in COCO_CATEGORIES])
    ann_path = osp.join(out_dir, 'annotations', f'instances_{split}2017.json')
    with open(ann_path, 'w') as f:
        json.dump(coco, f)
    return coco


TINY_COCO_FILES = ('annotations/instances_train2017.json', 'annotations/instances_val2017.json',
                   'train2017', 'val2017')


def make_tiny_coco(out_dir: str, num_train: int = 64, num_val: int = 16,
                   image_size: Sequence[int] = (128, 128), seed: int = 0) -> Dict[str, str]:
    """Write the set to ``out_dir``; returns the two annotation file paths by split.

    ``image_size`` is (width, height). The same arguments always write the same files.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f'need at least one image per split, got {num_train=} {num_val=}')
    if len(image_size) != 2 or min(image_size) < 32:
        raise ValueError(f'image_size must be (width, height), both >= 32, got {image_size}')
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    _write_split(out_dir, 'train', num_train, image_size, rng, first_image_id=1)
    _write_split(out_dir, 'val', num_val, image_size, rng, first_image_id=100001)
    return {split: osp.join(out_dir, 'annotations', f'instances_{split}2017.json')
            for split in ('train', 'val')}
