"""The plain EMSAv2 math path, for benchmarks and numerical cross-checks.

``PlainEMSAv2`` overrides only :meth:`EMSAv2.attend` with a straightforward transcription of the
paper's formula on (B, N, C) tokens: explicit ``softmax(q k^T / sqrt(d)) v`` per head (the whole
N x n score matrix is materialised), no ``scaled_dot_product_attention``, no fused layouts. It has
the same parameters and state-dict keys as :class:`EMSAv2`, so a backbone switched to it with
:func:`to_plain` computes the same function with the same weights, only the way the paper writes
it. ``tools/benchmark.py --models restv2-plain`` times it as the baseline of the fast path.
"""
import copy
import math
from typing import Optional

import torch
import torch.nn as nn

from .attention import EMSAv2


class PlainEMSAv2(EMSAv2):
    """EMSAv2 with the plain (B, N, C) math path; see the module docstring."""

    def attend(self, x: torch.Tensor, key_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, H, W, C = x.shape
        heads, d = self.num_heads, C // self.num_heads
        tokens = x.reshape(B, H * W, C)
        q = self.q(tokens)
        if self.sr_ratio > 1:
            m = self.sr(tokens.transpose(1, 2).reshape(B, C, H, W))
            h, w = m.shape[-2:]
            reduced = self.sr_norm(m.flatten(2).transpose(1, 2))
        else:
            h, w, reduced = H, W, tokens
        k, v = self.kv(reduced).chunk(2, dim=-1)  # (B, n, C) each
        if key_valid is not None:
            v = v * key_valid.reshape(B, h * w, 1).to(v.dtype)
        outs = []
        for i in range(heads):
            sl = slice(i * d, (i + 1) * d)
            scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d)
            if key_valid is not None:
                scores = scores.masked_fill(~key_valid.reshape(B, 1, h * w), float('-inf'))
            outs.append(torch.softmax(scores, dim=-1) @ v[..., sl])
        attn = torch.cat(outs, dim=-1)
        up = self.up(v.transpose(1, 2).reshape(B, C, h, w))[:, :, :H, :W]
        up = self.up_norm(up.flatten(2).transpose(1, 2))
        return self.proj((attn + up).reshape(B, H, W, C))


def to_plain(model: nn.Module, copy_model: bool = True) -> nn.Module:
    """``model`` (or a deep copy) with every :class:`EMSAv2` switched to :class:`PlainEMSAv2`.

    Only the class changes: parameters, buffers and state-dict keys stay exactly as they are.
    """
    if copy_model:
        model = copy.deepcopy(model)
    for m in model.modules():
        if type(m) is EMSAv2:
            m.__class__ = PlainEMSAv2
    return model
