"""EMSAv2, ResTv2's attention, with the window styles of the paper's Table 3 as one switch.

EMSAv2(x) = proj( softmax(q k^T / sqrt(d)) v  +  LN(PixelShuffle(dwconv(v))) ), where k and v come
from a depthwise strided convolution of x (reduction ``sr_ratio``) and the second term, the "up"
branch, restores the detail that the reduction removed.
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fast_paths import exporting, select_fast_paths  # noqa: F401  (exporting: re-exported)


def window_partition(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, H, W, C) with H % wh == W % ww == 0 -> (B * nW, wh, ww, C), windows in row order."""
    B, H, W, C = x.shape
    x = x.view(B, H // wh, wh, W // ww, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh, ww, C)


def window_reverse(windows: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, wh, ww, C) -> (B, H, W, C)."""
    _, wh, ww, C = windows.shape
    x = windows.view(B, H // wh, W // ww, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)


class EMSAv2(nn.Module):
    """Efficient multi-head self-attention v2 on (B, H, W, C) token maps.

    Args:
        embed_dims: channels C.
        num_heads: attention heads h (head width C / h).
        sr_ratio: spatial reduction r of keys and values (1 keeps every token).
        window_size: ``None`` attends over the whole map ("Global"); an int runs the attention
            inside non-overlapping ``window_size`` x ``window_size`` windows ("Win"). Maps are
            padded up to whole windows; padded tokens are masked out of the keys and zeroed
            before the up branch, so a real token sees exactly what it would see if its window
            were a separate image cut to the map, and the padding is cropped away afterwards.
    """

    def __init__(self, embed_dims: int, num_heads: int, sr_ratio: int,
                 window_size: Optional[int] = None):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.window_size = window_size

        self.q = nn.Linear(embed_dims, embed_dims)
        self.kv = nn.Linear(embed_dims, embed_dims * 2)
        if sr_ratio > 1:
            # kernel r+1, stride r, padding r//2: ceil(H / r) outputs for any H.
            self.sr = nn.Conv2d(embed_dims, embed_dims, sr_ratio + 1, stride=sr_ratio,
                                padding=sr_ratio // 2, groups=embed_dims)
            self.sr_norm = nn.LayerNorm(embed_dims, eps=1e-6)
        self.up = nn.Sequential(
            nn.Conv2d(embed_dims, sr_ratio * sr_ratio * embed_dims, 3, padding=1, groups=embed_dims),
            nn.PixelShuffle(sr_ratio))
        self.up_norm = nn.LayerNorm(embed_dims, eps=1e-6)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def extra_repr(self) -> str:
        style = 'global' if self.window_size is None else f'window={self.window_size}'
        return f'heads={self.num_heads}, sr_ratio={self.sr_ratio}, {style}'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        if exporting():
            return self.forward_any_size(x)
        if self.window_size is None:
            return self.attend(x)
        B, H, W, C = x.shape
        # A window larger than the map is the map itself (padding it would only add masked work).
        wh, ww = min(self.window_size, H), min(self.window_size, W)
        if (wh, ww) == (H, W):
            return self.attend(x)
        pad_h, pad_w = -H % wh, -W % ww
        key_valid = None
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
            token_valid = x.new_zeros((1, H + pad_h, W + pad_w, 1), dtype=torch.bool)
            token_valid[:, :H, :W] = True
            token_valid = window_partition(token_valid, wh, ww).squeeze(-1)  # (nW, wh, ww)
            r = self.sr_ratio
            # A reduced position is real iff the first token of its stride cell is real.
            key_valid = token_valid[:, ::r, ::r].repeat(B, 1, 1)
        out = self.attend(window_partition(x, wh, ww), key_valid)
        out = window_reverse(out, B, H + pad_h, W + pad_w)
        return out[:, :H, :W] if (pad_h or pad_w) else out

    def forward_any_size(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with no Python decision on the input's size, for exported graphs.

        (B, H, W, C) -> (B, H, W, C). The window side is ``min(window_size, H)`` computed as a
        tensor, padding and the key mask always exist (all-true, zero padding where the map fits
        whole windows), and "window larger than the map" is the one window of that size, so the
        graph recorded at one size computes :meth:`forward` at every size, up to float rounding.
        """
        if self.window_size is None:
            return self.attend(x)
        shape = torch._shape_as_tensor(x)  # a Shape node when recorded, a tensor in eager mode
        H, W = shape[1], shape[2]
        wh = torch.clamp(H, max=self.window_size)
        ww = torch.clamp(W, max=self.window_size)
        pad_h, pad_w = (wh - H % wh) % wh, (ww - W % ww) % ww
        Hp, Wp = H + pad_h, W + pad_w
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        B, C = x.shape[0], x.shape[3]
        nh, nw = Hp // wh, Wp // ww
        windows = x.view(B, nh, wh, nw, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, wh, ww, C)
        token_valid = ((torch.arange(Hp, device=x.device) < H).view(nh, wh, 1, 1)
                       & (torch.arange(Wp, device=x.device) < W).view(1, 1, nw, ww))
        token_valid = token_valid.permute(0, 2, 1, 3).flatten(0, 1)  # (nW, wh, ww), row order
        r = self.sr_ratio
        # As in forward: a reduced position is real iff the first token of its stride cell is.
        key_valid = token_valid[:, ::r, ::r]
        key_valid = key_valid.unsqueeze(0).expand(B, -1, -1, -1).flatten(0, 1)  # (B * nW, h, w)
        out = self.attend(windows, key_valid)
        out = out.view(B, nh, nw, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
        return out[:, :H, :W]

    def attend(self, x: torch.Tensor, key_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """EMSAv2 over whole (B, H, W, C) maps; ``key_valid`` (B, h, w) masks padded keys."""
        B, H, W, C = x.shape
        heads, head_dims = self.num_heads, C // self.num_heads
        q = self.q(x).reshape(B, H * W, heads, head_dims).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.sr_norm(self.sr(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        h, w = x.shape[1:3]
        k, v = self.kv(x).chunk(2, dim=-1)  # (B, h, w, C) each
        attn_mask = None
        if key_valid is not None:
            v = v * key_valid.unsqueeze(-1).to(v.dtype)
            attn_mask = key_valid.reshape(B, 1, 1, h * w)

        # Up branch: (B, C, h, w) -> (B, C, r*h, r*w), cropped to the query map when H or W is
        # not a multiple of r (the reduction rounded up).
        up = self.up(v.permute(0, 3, 1, 2))[:, :, :H, :W]
        up = self.up_norm(up.permute(0, 2, 3, 1))

        k = k.reshape(B, h * w, heads, head_dims).transpose(1, 2)
        v = v.reshape(B, h * w, heads, head_dims).transpose(1, 2)
        if exporting():
            out = explicit_attention(q, k, v, attn_mask, head_dims=self.embed_dims // heads)
        elif low_precision_cpu_inference(q):
            # PyTorch's CPU flash attention gains nothing from bf16 without AMX (it measured
            # 129 ms in bf16 and 125 ms in fp32 for stage 1 at 1280x800 on an AVX512-BF16 CPU),
            # while bf16 matmuls run 2.5x faster than it: 47 ms with the softmax between them.
            out = chunked_attention(q, k, v, attn_mask)
        else:
            out = fused_attention(q, k, v, attn_mask)
        # In every branch out.transpose(1, 2) flattens to (B, H * W, heads, head_dims).
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C) + up)


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """PyTorch's SDPA on (B, heads, N, d) queries and (B, heads, n, d) keys/values.

    Returns (B * s, heads, N / s, d): for CPU training without a mask the queries may be cut into
    s groups moved to the batch dimension (see :func:`query_splits`; never on other devices,
    see :mod:`.fast_paths`); ``transpose(1, 2)`` of the result flattens to (B, N, heads, d)
    either way.
    """
    B, heads, N, head_dims = q.shape
    splits = 1
    if attn_mask is None and select_fast_paths(q.device, q.dtype,
                                               torch.is_grad_enabled()).query_splits:
        splits = query_splits(B * heads, N)
    if splits == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    # Every query attends to the same keys independently, so cutting the queries into
    # ``splits`` groups moved to the batch dimension (a view) computes the same numbers.
    # It matters for training on CPU: the backward of PyTorch's CPU flash attention
    # parallelises over batch x heads only; stage 1 (1 head) at 1280x800 measured 3.4x
    # faster per EMSAv2 training step with the split, on 2 threads.
    n = k.shape[2]
    q = q.transpose(1, 2).reshape(B * splits, N // splits, heads, head_dims).transpose(1, 2)
    k = k.unsqueeze(1).expand(B, splits, heads, n, head_dims).flatten(0, 1)
    v = v.unsqueeze(1).expand(B, splits, heads, n, head_dims).flatten(0, 1)
    return F.scaled_dot_product_attention(q, k, v)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       attn_mask: Optional[torch.Tensor], head_dims: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v as MatMul, Softmax, MatMul on (B, heads, N, d) queries and
    (B, heads, n, d) keys/values; ``attn_mask`` (broadcast to (B, heads, N, n), True = attend);
    ``head_dims`` d as a Python int, so the scale is a constant of the graph.

    Used when recording a graph: it exports at every ONNX opset, while SDPA needs opset >= 14 in
    the TorchScript exporter (which lowers it to these same nodes anyway).
    """
    scores = (q * (1.0 / math.sqrt(head_dims))) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float('-inf'))
    return torch.softmax(scores, dim=-1) @ v


def low_precision_cpu_inference(q: torch.Tensor) -> bool:
    """True for bf16 queries on the CPU with autograd off (test, demo, benchmark): the
    :func:`chunked_attention` case of :func:`.fast_paths.select_fast_paths`."""
    return select_fast_paths(q.device, q.dtype, torch.is_grad_enabled()).chunked_attention


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      attn_mask: Optional[torch.Tensor],
                      max_scores: int = 1 << 22) -> torch.Tensor:
    """:func:`explicit_attention` over groups of queries, written into one output.

    (B, heads, N, d) queries, (B, heads, n, d) keys/values -> (B, heads, N, d). Each group's
    (B, heads, N_g, n) scores hold at most ``max_scores`` elements (8 MiB in bf16), so memory
    stays that of one group however large the image; every query attends independently, so the
    result is that of one explicit attention over all queries.
    """
    B, heads, N, head_dims = q.shape
    group = max(1, max_scores // (B * heads * k.shape[-2]))
    out = q.new_empty(q.shape[:-1] + (v.shape[-1], ))
    for start in range(0, N, group):
        out[:, :, start:start + group] = explicit_attention(
            q[:, :, start:start + group], k, v, attn_mask, head_dims)
    return out


def query_splits(batch_heads: int, num_queries: int, min_queries: int = 256) -> int:
    """Query groups that give the CPU flash-attention backward enough parallel work.

    1 (no split) when ``batch_heads`` >= threads; else the largest divisor of ``num_queries`` up
    to ``ceil(4 * threads / batch_heads)`` that keeps at least ``min_queries`` queries per group.
    """
    threads = torch.get_num_threads()
    if batch_heads >= threads:  # measured: no gain once every thread has a (batch, head)
        return 1
    want = min(-(-4 * threads // batch_heads), num_queries // min_queries)
    for splits in range(want, 1, -1):
        if num_queries % splits == 0:
            return splits
    return 1
