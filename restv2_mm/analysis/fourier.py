"""Relative log amplitude of Fourier-transformed feature maps (ResTv2 paper, Figure 3).

The measure of Park & Kim, "How do vision transformers work?" (ICLR 2022), which the ResTv2
paper follows: for a feature map (C, H, W),

1. 2D FFT of every channel, shifted so that frequency 0 sits at the centre (``fftshift``);
2. log amplitude ``log(|F| + eps)`` (``eps`` keeps empty frequencies finite);
3. mean over channels and images;
4. the values along the half diagonal, from the centre (frequency 0) to the corner (frequency
   pi in both directions);
5. minus the value at frequency 0 (hence *relative* log amplitude: 0 at frequency 0).

``delta`` = value at the highest frequency minus value at 0 (the paper's Delta log amplitude):
negative for a low-pass map, near 0 for a map with a flat (white) spectrum, positive when high
frequencies dominate.

Frequencies are reported in units of pi. For an even side N the corner is exactly pi; for an
odd side (e.g. a 7 x 7 stage-4 map) the last diagonal point is (N - 1) / N * pi.

A spatially constant map puts all its amplitude at frequency 0: its curve is 0 at frequency 0
and then flat at ``log(eps) - log(|c| H W + eps)`` over every other frequency (finite thanks to
``eps``); an all-zero map is flat at 0 everywhere.
"""
from typing import Iterable, Tuple, Union

import torch

EPS = 1e-6


def log_amplitude_spectrum(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(..., H, W) maps -> fftshift-ed log amplitude, same shape, float64."""
    f = torch.fft.fft2(x.to(torch.float64), dim=(-2, -1))
    f = torch.fft.fftshift(f, dim=(-2, -1))
    return torch.log(f.abs() + eps)


def half_diagonal(spectrum: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(H, W) shifted spectrum -> (values, frequencies in units of pi) from the centre (0) to
    the corner. The centre of a shifted spectrum is (H // 2, W // 2); index H // 2 - k holds
    frequency -2 pi k / H, the mirror image of +k for real input, and reaches -pi at index 0
    for even H. Non-square maps step both axes to their own Nyquist frequency together."""
    H, W = spectrum.shape[-2:]
    n = min(H // 2, W // 2) + 1
    steps = torch.arange(n, dtype=torch.float64)
    ky = torch.round(steps * (H // 2) / max(n - 1, 1)).long()
    kx = torch.round(steps * (W // 2) / max(n - 1, 1)).long()
    values = spectrum[..., H // 2 - ky, W // 2 - kx]
    freqs = 2.0 * ky.to(torch.float64) / H
    return values, freqs


def relative_log_amplitude(
        features: Union[torch.Tensor, Iterable[torch.Tensor]],
        eps: float = EPS,
        channels_last: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Figure 3's curve for one block.

    Args:
        features: (B, C, H, W) maps (or (B, H, W, C) with ``channels_last``), or an iterable of
            such batches of the same H, W (e.g. several forward passes); averaged over all
            channels and images.
        eps: added to the amplitude before the log.

    Returns:
        (values, frequencies): the relative log amplitude along the half diagonal (values[0] is
        0) and its frequencies in units of pi, both 1-D float64.
    """
    if isinstance(features, torch.Tensor):
        features = [features]
    total, count = None, 0
    for x in features:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise ValueError(f'expected (B, C, H, W) maps, got shape {tuple(x.shape)}')
        if channels_last:
            x = x.permute(0, 3, 1, 2)
        spec = log_amplitude_spectrum(x.detach().cpu(), eps).sum(dim=(0, 1))
        if total is not None and spec.shape != total.shape:
            raise ValueError(f'maps of different sizes: {tuple(total.shape)} vs {tuple(spec.shape)}')
        total = spec if total is None else total + spec
        count += x.shape[0] * x.shape[1]
    if total is None:
        raise ValueError('no feature maps given')
    values, freqs = half_diagonal(total / count)
    return values - values[0], freqs


def delta_log_amplitude(values: torch.Tensor) -> float:
    """Delta log amplitude: the relative log amplitude at the highest frequency minus at 0."""
    return float(values[-1] - values[0])
