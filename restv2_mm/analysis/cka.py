"""Linear centred kernel alignment (Kornblith et al., ICML 2019), the measure of Figure 4.

``linear_cka(X, Y)`` for representations X (n, p) and Y (n, q) of the same n samples:

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F),   Xc, Yc: columns centred.

It is 1 for X against itself (and against any orthogonal transform or isotropic scaling of X),
and near 0 for independent representations when n is much larger than p and q. When n is not
(for independent Gaussian X and Y it is about sqrt(pq / ((n + p)(n + q)))), ``debiased=True``
uses the unbiased HSIC estimator of Song et al. (2012), as in Kornblith et al.'s code, whose value
for independent representations is near 0 for any n (and which can be slightly negative).
"""
import torch


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to(torch.float64)
    return x.reshape(x.shape[0], -1) if x.dim() != 2 else x


def _debiased(dot: torch.Tensor, sq_rows_x: torch.Tensor, sq_rows_y: torch.Tensor,
              n: int) -> torch.Tensor:
    """Unbiased HSIC (up to a constant factor) from feature-space quantities of centred data."""
    return (dot - n / (n - 2.) * torch.dot(sq_rows_x, sq_rows_y)
            + sq_rows_x.sum() * sq_rows_y.sum() / ((n - 1) * (n - 2)))


def linear_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = False) -> float:
    """Linear CKA between ``x`` (n, ...) and ``y`` (n, ...); trailing dims are flattened."""
    x, y = _as_2d(x), _as_2d(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f'x and y must hold the same samples, got {x.shape[0]} and {y.shape[0]}')
    n = x.shape[0]
    if n < (4 if debiased else 2):
        raise ValueError(f'linear CKA needs at least {4 if debiased else 2} samples, got {n}')
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    dot = (y.T @ x).pow(2).sum()
    norm_x = (x.T @ x).pow(2).sum()  # squared Frobenius norms of the Gram-like matrices
    norm_y = (y.T @ y).pow(2).sum()
    if debiased:
        sq_x, sq_y = x.pow(2).sum(1), y.pow(2).sum(1)
        dot = _debiased(dot, sq_x, sq_y, n)
        norm_x = _debiased(norm_x, sq_x, sq_x, n)
        norm_y = _debiased(norm_y, sq_y, sq_y, n)
    denom = torch.sqrt(norm_x.clamp(min=0) * norm_y.clamp(min=0))
    if denom <= 0:
        return 0.0  # a constant representation carries no similarity structure
    return float(dot / denom)


KINDS = ('up', 'attn', 'com')


def _tokens(maps: torch.Tensor, size, index: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> the (n, C) tokens at ``index`` after average pooling to ``size``."""
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = torch.nn.functional.adaptive_avg_pool2d(maps.float(), size)
    tokens = maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])
    return tokens[index].to(torch.float64)


def branch_cka_matrix(branches, kinds=KINDS, max_samples: int = 4096, debiased: bool = False,
                      seed: int = 0):
    """Linear CKA between every pair of branch representations of every EMSAv2 (Figure 4).

    Args:
        branches: ``{module: {'up', 'attn', 'com': (N, C, H, W)}}`` in network order, as
            returned by :func:`restv2_mm.analysis.features.collect_branch_outputs`.
        kinds: which representations, and their order.
        max_samples: tokens per comparison (a fixed random subset, the same for both sides).
        debiased: use the unbiased HSIC estimator (see :func:`linear_cka`).

    Samples are tokens (image positions) across all images, features are channels. Two maps of
    different resolution (different stages) are compared on the coarser grid: the finer one is
    average-pooled to it, so that sample i is the same image region on both sides.

    Returns:
        (matrix, labels): a (K * M) x (K * M) float64 tensor for K kinds and M modules, ordered
        kind-major (all 'up', then all 'attn', then all 'com'), and labels like 'b3.up'
        (b = the 1-based index of the module in the network).
    """
    names = list(branches)
    reps, labels = [], []
    for kind in kinds:
        for i, name in enumerate(names):
            reps.append(branches[name][kind])
            labels.append(f'b{i + 1}.{kind}')
    if not reps:
        raise ValueError('no representations given')
    num_images = reps[0].shape[0]
    sizes = [tuple(r.shape[-2:]) for r in reps]
    n = len(reps)
    matrix = torch.empty(n, n, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    # One grid per distinct pair of sizes (in practice: per coarser stage), tokens sampled once.
    grids = {}
    for i in range(n):
        for j in range(i, n):
            grid = (min(sizes[i][0], sizes[j][0]), min(sizes[i][1], sizes[j][1]))
            grids.setdefault(grid, []).append((i, j))
    for grid, pairs in grids.items():
        total = num_images * grid[0] * grid[1]
        index = torch.randperm(total, generator=gen)[:max_samples] if total > max_samples \
            else torch.arange(total)
        m = len(index)
        if m < (4 if debiased else 2):
            raise ValueError(f'linear CKA needs more samples than the {m} tokens on a {grid} grid')
        cache = {}  # k -> (centred tokens, HSIC(X, X) term, squared row norms)

        def terms(k):
            if k not in cache:
                x = _tokens(reps[k], grid, index)
                x = x - x.mean(0, keepdim=True)
                sq = x.pow(2).sum(1)
                self_dot = (x.T @ x).pow(2).sum()
                if debiased:
                    self_dot = _debiased(self_dot, sq, sq, m)
                cache[k] = (x, self_dot.clamp(min=0), sq)
            return cache[k]

        for i, j in pairs:
            (x, xx, sq_x), (y, yy, sq_y) = terms(i), terms(j)
            dot = (y.T @ x).pow(2).sum()
            if debiased:
                dot = _debiased(dot, sq_x, sq_y, m)
            denom = torch.sqrt(xx * yy)
            matrix[i, j] = matrix[j, i] = float(dot / denom) if denom > 0 else 0.0
    return matrix, labels
