"""A tiny synthetic, learnable ADE20K (ADEChallengeData2016 layout) for quick starts and tests.

The real set cannot be downloaded here, so this writes a few images in exactly the layout and
label encoding that MMSegmentation's ``ADE20KDataset`` reads::

    OUT_DIR/images/training/ADE_train_00000001.jpg      RGB scenes
    OUT_DIR/images/validation/ADE_val_00000001.jpg
    OUT_DIR/annotations/training/ADE_train_00000001.png    uint8 labels, 0 = "other",
    OUT_DIR/annotations/validation/ADE_val_00000001.png    1..150 = the ADE20K classes

``ADE20KDataset`` uses ``reduce_zero_label=True``: label 0 becomes 255 (ignored) and 1..150
become the 150 training classes 0..149, so every image here also has some "other" pixels.

Each scene is an upper "stuff" region (wall or sky) over a lower one (floor or grass) with one
to three "things" (bed, person, car) on it. Every drawn class has its own colour and texture
(the table below), so the class of a pixel is decided by its appearance and a segmentor trained
from scratch learns the set in minutes. Image sides are deliberately not multiples of 32, as in
the real set. Train and val come from one seeded generator (val after train, held out).
"""
import os
import os.path as osp
from typing import Dict, Sequence, Tuple

import cv2
import numpy as np

ADE20K_NUM_CLASSES = 150
OTHER_LABEL = 0
TINY_ADE20K_FILES = ('images/training', 'images/validation', 'annotations/training',
                     'annotations/validation')
# ADE20K label value (1-based, as stored in the PNGs) -> (name, RGB colour, texture).
TINY_ADE20K_CLASSES = {
    1: ('wall', (200, 190, 160), 'vertical stripes'),
    3: ('sky', (120, 170, 235), 'smooth'),
    4: ('floor', (130, 80, 40), 'horizontal stripes'),
    10: ('grass', (60, 150, 50), 'speckles'),
    8: ('bed', (170, 60, 170), 'checks'),
    13: ('person', (220, 50, 50), 'smooth'),
    21: ('car', (240, 210, 40), 'diagonal stripes'),
}
UPPER_STUFF, LOWER_STUFF = (1, 3), (4, 10)
# thing -> (shape, half width / height ranges as fractions of the image width / height)
THINGS = {
    8: ('rectangle', (0.15, 0.25), (0.08, 0.14)),
    13: ('ellipse', (0.05, 0.09), (0.15, 0.25)),
    21: ('rectangle', (0.12, 0.2), (0.06, 0.1)),
}
STUFF_CLASSES = UPPER_STUFF + LOWER_STUFF
THING_CLASSES = tuple(THINGS)


def _not_multiple_of_32(value: int) -> int:
    return value + 1 if value % 32 == 0 else value


def _texture(kind: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An (H, W) brightness offset for a texture name of TINY_ADE20K_CLASSES."""
    ys, xs = np.mgrid[0:height, 0:width]
    if kind == 'vertical stripes':
        return 25 * np.sign(np.sin(xs * 2 * np.pi / 8))
    if kind == 'horizontal stripes':
        return 25 * np.sign(np.sin(ys * 2 * np.pi / 6))
    if kind == 'diagonal stripes':
        return 25 * np.sign(np.sin((xs + ys) * 2 * np.pi / 8))
    if kind == 'checks':
        return 25 * (((xs // 6) + (ys // 6)) % 2 * 2 - 1)
    if kind == 'speckles':
        return rng.normal(0, 30, size=(height, width))
    return np.zeros((height, width))


def _draw_scene(rng: np.random.Generator, height: int,
                width: int) -> Tuple[np.ndarray, np.ndarray]:
    """An RGB image (H, W, 3) and its uint8 label map (H, W) of ADE20K label values."""
    label = np.empty((height, width), dtype=np.uint8)
    horizon = int(rng.uniform(0.35, 0.65) * height)
    label[:horizon] = rng.choice(UPPER_STUFF)
    label[horizon:] = rng.choice(LOWER_STUFF)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.choice(THING_CLASSES))
        shape, (w0, w1), (h0, h1) = THINGS[cls]
        half_w = max(2, int(rng.uniform(w0, w1) * width))
        half_h = max(2, int(rng.uniform(h0, h1) * height))
        cx = int(rng.uniform(0.15, 0.85) * width)
        cy = int(rng.uniform(0.3, 0.8) * height)
        if shape == 'rectangle':
            cv2.rectangle(label, (cx - half_w, cy - half_h), (cx + half_w, cy + half_h), cls, -1)
        else:
            cv2.ellipse(label, (cx, cy), (half_w, half_h), 0, 0, 360, cls, -1)
    # Unlabelled clutter ("other", label 0): grey, which training and evaluation ignore.
    cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
    cv2.circle(label, (cx, cy), int(rng.uniform(0.04, 0.08) * min(height, width)) + 1,
               OTHER_LABEL, -1)

    image = np.full((height, width, 3), 128.0)
    for value, (_, colour, texture) in TINY_ADE20K_CLASSES.items():
        mask = label == value
        if mask.any():
            jitter = rng.integers(-15, 16, size=3)
            shade = _texture(texture, rng, height, width)[mask][:, None]
            image[mask] = np.array(colour) + jitter + shade
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_tiny_ade20k(out_dir: str,
                     num_train: int = 32,
                     num_val: int = 8,
                     height_range: Sequence[int] = (100, 160),
                     width_range: Sequence[int] = (130, 220),
                     seed: int = 0) -> Dict[str, int]:
    """Write a tiny ADE20K-format set to ``out_dir``; returns the number of images per split.

    Image heights and widths are drawn from the given (inclusive) ranges and never are
    multiples of 32. The same ``seed`` always writes the same files.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f'need at least one image per split, got {num_train=} {num_val=}')
    rng = np.random.default_rng(seed)
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
            image, label = _draw_scene(rng, height, width)
            name = f'{prefix}_{index:08d}'
            # cv2 writes BGR; the JPEG then holds the RGB scene that the colours describe.
            if not cv2.imwrite(osp.join(img_dir, name + '.jpg'), image[..., ::-1],
                               [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise OSError(f'could not write {osp.join(img_dir, name + ".jpg")}')
            if not cv2.imwrite(osp.join(ann_dir, name + '.png'), label):
                raise OSError(f'could not write {osp.join(ann_dir, name + ".png")}')
        counts[split] = count
    return counts
