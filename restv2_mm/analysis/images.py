"""A small, deterministic, built-in image set for the analysis tools (nothing is downloaded).

Natural images have an amplitude spectrum falling roughly as 1/f, edges, flat regions and
texture; the Fourier figure is only meaningful on inputs like that. The set mixes

* crops of the photograph shipped with matplotlib (``sample_data/grace_hopper.jpg``),
* the two elevation models shipped with matplotlib, shaded with a colour map (real terrain),
* procedural scenes: 1/f ("pink") colour noise under soft-edged ellipses, rectangles and
  gradients, drawn from a fixed seed.

If matplotlib's sample data is missing, the procedural scenes fill the whole set. Every image is
RGB uint8, ``size`` x ``size``; the same call always returns the same pixels.
"""
import os
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def _sample_data_dir() -> Optional[str]:
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - matplotlib ships with mmengine
        return None
    path = os.path.join(matplotlib.get_data_path(), 'sample_data')
    return path if os.path.isdir(path) else None


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).convert('RGB').resize((size, size), Image.BICUBIC))


def _photo_crops(root: str, size: int) -> List[np.ndarray]:
    path = os.path.join(root, 'grace_hopper.jpg')
    if not os.path.isfile(path):
        return []
    img = np.asarray(Image.open(path).convert('RGB'))
    h, w = img.shape[:2]
    s = min(h, w)
    out = []
    # whole (centre square), two half-size crops (face, medals) and a mirrored three-quarter crop
    for top, left, side, flip in ((h - s) // 2, (w - s) // 2, s, False), \
            (int(0.05 * h), int(0.25 * w), s // 2, False), \
            (int(0.55 * h), int(0.1 * w), s // 2, False), \
            (h - 3 * s // 4, w - 3 * s // 4, 3 * s // 4, True):
        crop = img[top:top + side, left:left + side]
        out.append(_resize(crop[:, ::-1].copy() if flip else crop, size))
    return out


def _terrain(root: str, size: int) -> List[np.ndarray]:
    import matplotlib
    out = []
    for name, key, cmaps in (('jacksboro_fault_dem.npz', 'elevation', ('gist_earth', 'terrain')),
                             ('topobathy.npz', 'topo', ('terrain', 'cubehelix'))):
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            continue
        with np.load(path) as data:
            if key not in data:
                continue
            z = np.asarray(data[key], dtype=np.float64)
        z = (z - z.min()) / max(z.max() - z.min(), 1e-12)
        # hill shading: brightness from the slope towards a light in the north-west
        gy, gx = np.gradient(z)
        shade = np.clip(0.6 + 4.0 * (-gx - gy), 0.2, 1.0)[..., None]
        for cmap in cmaps:
            rgb = matplotlib.colormaps[cmap](z)[..., :3] * shade
            out.append(_resize((rgb * 255).clip(0, 255).astype(np.uint8), size))
    return out


def pink_noise(rng: np.random.Generator, size: int, channels: int = 3,
               alpha: float = 1.0) -> np.ndarray:
    """Noise in [0, 1] with amplitude ~ 1 / f**alpha (natural-image statistics), (size, size, C)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0 / size
    out = np.empty((size, size, channels))
    for c in range(channels):
        phase = np.exp(2j * np.pi * rng.random((size, size)))
        x = np.real(np.fft.ifft2(phase / f ** alpha))
        out[..., c] = (x - x.min()) / max(x.max() - x.min(), 1e-12)
    return out


def procedural_scene(seed: int, size: int = 224) -> np.ndarray:
    """One synthetic 'natural-ish' RGB uint8 image from ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    # background: a colour gradient plus 1/f texture
    c0, c1 = rng.random(3), rng.random(3)
    t = np.clip((xx * np.cos(rng.random() * np.pi) + yy * np.sin(rng.random() * np.pi)), 0, 1)
    img = (1 - t[..., None]) * c0 + t[..., None] * c1
    img = 0.6 * img + 0.4 * pink_noise(rng, size, alpha=rng.uniform(0.8, 1.4))
    # objects: soft-edged ellipses and rectangles, each with its own colour and texture
    for _ in range(rng.integers(3, 8)):
        cy, cx = rng.random(2)
        ry, rx = rng.uniform(0.05, 0.3, 2)
        if rng.random() < 0.5:
            d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        else:
            d = np.maximum(np.abs(yy - cy) / ry, np.abs(xx - cx) / rx) ** 2
        soft = rng.uniform(0.01, 0.2)
        mask = 1.0 / (1.0 + np.exp(np.clip((d - 1.0) / soft, -50, 50)))
        colour = rng.random(3) * (0.7 + 0.3 * pink_noise(rng, size, alpha=1.5))
        img = img * (1 - mask[..., None]) + colour * mask[..., None]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def builtin_images(num: int = 16, size: int = 224) -> List[np.ndarray]:
    """``num`` deterministic RGB uint8 images of ``size`` x ``size`` (see the module docstring)."""
    if num < 1:
        raise ValueError(f'num must be >= 1, got {num}')
    root = _sample_data_dir()
    images: List[np.ndarray] = []
    if root is not None:
        images += _photo_crops(root, size) + _terrain(root, size)
    seed = 0
    while len(images) < num:
        images.append(procedural_scene(seed, size))
        seed += 1
    return images[:num]


def list_images(directory: str) -> List[str]:
    """Image files directly inside ``directory``, sorted by name."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f'--images: no directory {directory!r}')
    files = sorted(os.path.join(directory, f) for f in os.listdir(directory)
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f'--images: no images ({", ".join(IMAGE_EXTENSIONS)}) in '
                                f'{directory!r}')
    return files


def load_images(directory: Optional[str] = None, size: int = 224, num: Optional[int] = None,
                paths: Optional[Sequence[str]] = None) -> List[np.ndarray]:
    """RGB uint8 images resized to ``size`` x ``size``: from ``paths``, a ``directory`` (the
    first ``num`` files by name) or, with neither, the built-in set of ``num`` (16) images."""
    if paths is None and directory is None:
        return builtin_images(num or 16, size)
    if paths is None:
        paths = list_images(directory)
    paths = list(paths)[:num] if num else list(paths)
    return [_resize(np.asarray(Image.open(p).convert('RGB')), size) for p in paths]
