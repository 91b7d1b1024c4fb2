"""A tiny synthetic ADE20K (ADEChallengeData2016 layout) for quick starts and end-to-end tests.

The real set cannot be downloaded here, so this writes a few images in exactly the layout and
label encoding that MMSegmentation's ``ADE20KDataset`` reads::

    OUT_DIR/images/training/ADE_train_00000001.jpg      RGB scenes
    OUT_DIR/images/validation/ADE_val_00000001.jpg
    OUT_DIR/annotations/training/ADE_train_00000001.png    uint8 labels, 0 = "other",
    OUT_DIR/annotations/validation/ADE_val_00000001.png    1..150 = the ADE20K classes

``ADE20KDataset`` uses ``reduce_zero_label=True``: label 0 becomes 255 (ignored) and 1..150
become the 150 training classes 0..149, so every image here also has some "other" pixels.

Each scene is a "stuff" background (wall, sky, floor, ...) with a few "thing" shapes (bed, car,
person, ...) on it. Every class has its own colour and texture, so a few training iterations
already move the loss; image sides are deliberately not multiples of 32, as in the real set.
"""
import os
import os.path as osp
from typing import Dict, Sequence, Tuple

import cv2
import numpy as np

ADE20K_NUM_CLASSES = 150
# ADE20K label values (1-based, as stored in the PNGs) of the classes drawn here.
STUFF_CLASSES = (1, 3, 4, 7, 10)  # wall, sky, floor, road, grass
THING_CLASSES = (8, 13, 16, 20, 21, 24)  # bed, person, table, chair, car, sofa
OTHER_LABEL = 0


def class_colours(seed: int = 2016) -> np.ndarray:
    """A fixed RGB colour for each of the 151 label values (index = label)."""
    rng = np.random.default_rng(seed)
    return rng.integers(30, 226, size=(ADE20K_NUM_CLASSES + 1, 3), dtype=np.int64)


def _not_multiple_of_32(value: int) -> int:
    return value + 1 if value % 32 == 0 else value


def _draw_scene(rng: np.random.Generator, height: int, width: int,
                colours: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    label = np.full((height, width), rng.choice(STUFF_CLASSES), dtype=np.uint8)
    # A second stuff region (e.g. floor under a wall) below a random horizon.
    horizon = int(rng.uniform(0.45, 0.8) * height)
    label[horizon:] = rng.choice(STUFF_CLASSES)
    for _ in range(rng.integers(2, 5)):
        cls = int(rng.choice(THING_CLASSES))
        cx, cy = int(rng.uniform(0.1, 0.9) * width), int(rng.uniform(0.1, 0.9) * height)
        half_w = int(rng.uniform(0.08, 0.25) * width)
        half_h = int(rng.uniform(0.08, 0.25) * height)
        if rng.random() < 0.5:
            cv2.rectangle(label, (cx - half_w, cy - half_h), (cx + half_w, cy + half_h), cls, -1)
        else:
            cv2.ellipse(label, (cx, cy), (half_w, half_h), 0, 0, 360, cls, -1)
    # Unlabelled clutter ("other", label 0), which training and evaluation ignore.
    cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
    cv2.circle(label, (cx, cy), int(rng.uniform(0.03, 0.08) * min(height, width)) + 1,
               OTHER_LABEL, -1)

    image = colours[label].astype(np.float32)
    # Per-class texture: stripes whose period depends on the class, plus pixel noise.
    ys, xs = np.mgrid[0:height, 0:width]
    stripes = np.sin((xs + ys * (label % 3)) * (2 * np.pi / (4 + label % 7)))
    image += 18 * stripes[..., None] + rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_tiny_ade20k(out_dir: str,
                     num_train: int = 8,
                     num_val: int = 4,
                     height_range: Sequence[int] = (96, 200),
                     width_range: Sequence[int] = (128, 280),
                     seed: int = 0) -> Dict[str, int]:
    """Write a tiny ADE20K-format set to ``out_dir``; returns the number of images per split.

    Image heights and widths are drawn from the given (inclusive) ranges and never are
    multiples of 32. The same ``seed`` always writes the same files.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f'need at least one image per split, got {num_train=} {num_val=}')
    rng = np.random.default_rng(seed)
    colours = class_colours()
    counts = {}
    for split, prefix, count in (('training', 'ADE_train', num_train),
                                 ('validation', 'ADE_val', num_val)):
        img_dir = osp.join(out_dir, 'images', split)
        ann_dir = osp.join(out_dir, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for index in range(1, count + 1):
            height = _not_multiple_of_32(int(rng.integers(height_range[0], height_range[1] + 1)))
            width = _not_multiple_of_32(int(rng.integers(width_range[0], width_range[1] + 1)))
            image, label = _draw_scene(rng, height, width, colours)
            name = f'{prefix}_{index:08d}'
            # cv2 writes BGR; the JPEG then holds the RGB scene that the colours describe.
            if not cv2.imwrite(osp.join(img_dir, name + '.jpg'), image[..., ::-1],
                               [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise OSError(f'could not write {osp.join(img_dir, name + ".jpg")}')
            if not cv2.imwrite(osp.join(ann_dir, name + '.png'), label):
                raise OSError(f'could not write {osp.join(ann_dir, name + ".png")}')
        counts[split] = count
    return counts
