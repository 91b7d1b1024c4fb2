"""Small building blocks of ResTv2: pixel attention, the stem, patch embedding, MLP.

Convolutional pieces work on (B, C, H, W) maps; everything that a stage passes between blocks
is kept as (B, H, W, C) so LayerNorm and Linear layers act on the last dimension without copies.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .fast_paths import fast_paths_for, recording


def _ln(dims: int) -> nn.LayerNorm:
    # Every LayerNorm of ResTv2 uses eps=1e-6 (the released checkpoints were trained with it).
    return nn.LayerNorm(dims, eps=1e-6)


class PixelAttention(nn.Module):
    """PA, ResTv2's positional encoding: ``x * sigmoid(dwconv3x3(x))`` on (B, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.pa_conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.pa_conv(x))


class ConvStem(nn.Module):
    """Stride-4 stem: (B, 3, H, W) -> (B, ceil(H/4), ceil(W/4), C).

    conv3x3 s2 -> BN -> ReLU -> conv3x3 s2 -> BN -> ReLU -> conv1x1, then PA and LayerNorm.
    Module names follow the official checkpoint (``proj.0`` ... ``proj.6``, ``pos``, ``norm``).
    """

    def __init__(self, in_channels: int, embed_dims: int):
        super().__init__()
        hidden = embed_dims // 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, embed_dims, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(embed_dims),
            nn.ReLU(inplace=True),
            nn.Conv2d(embed_dims, embed_dims, 1),
        )
        self.pos = PixelAttention(embed_dims)
        self.norm = _ln(embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last convolutions: oneDNN's layout reorders of the full-resolution maps go
        # away and the output's permute to (B, H, W, C) is contiguous for the LayerNorm
        # (measured on CPU at 1280x800: stem training step 0.66x, forward 0.58x the time).
        x = self.pos(self.proj(x.contiguous(memory_format=torch.channels_last)))
        return self.norm(x.permute(0, 2, 3, 1))


class PatchEmbed(nn.Module):
    """Stride-2 downsampling between stages: (B, H, W, Cin) -> (B, ceil(H/2), ceil(W/2), Cout)."""

    def __init__(self, in_dims: int, out_dims: int):
        super().__init__()
        self.proj = nn.Conv2d(in_dims, out_dims, 3, stride=2, padding=1)
        self.pos = PixelAttention(out_dims)
        self.norm = _ln(out_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos(self.proj(x.permute(0, 3, 1, 2)))
        return self.norm(x.permute(0, 2, 3, 1))


# Hidden (tokens, 4C) elements per token group in the MLP's groups (8 MiB in fp32): a group's
# hidden tensors stay in cache and the allocator reuses their memory. Whole-map hidden
# tensors (98 MB at stage 1, 1280x800) are fresh allocations that glibc maps and the kernel
# page-faults on every step: measured on CPU, GELU's forward + backward over the whole map took
# 1.16 s of a 6.4 s ResTv2-T training step.
HIDDEN_PER_GROUP = 1 << 21


def token_groups(num_tokens: int, hidden_dims: int):
    """Row slices of (num_tokens, ...) tensors, each with <= HIDDEN_PER_GROUP hidden elements."""
    group = max(256, HIDDEN_PER_GROUP // hidden_dims)
    return [slice(start, start + group) for start in range(0, num_tokens, group)]


class _LinearGeluLinear(torch.autograd.Function):
    """``fc2(gelu(fc1(x)))`` on (N, C) tokens that saves ``fc1(x)`` but not its GELU.

    Autograd would keep both hidden (N, 4C) tensors alive until backward (the pre-activation
    for GELU's gradient, the activation for fc2's weight gradient); here the activation is
    recomputed from the pre-activation in backward. Everything after fc1 runs over token groups
    (:func:`token_groups`), so no other (N, 4C) tensor exists: the outputs are the same numbers,
    the weight gradients are sums over groups (equal up to float rounding).
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        hidden = F.linear(x, w1, b1)
        ctx.save_for_backward(x, hidden, w1, w2)
        out = x.new_empty(x.shape[0], w2.shape[0])
        for rows in token_groups(x.shape[0], hidden.shape[1]):
            out[rows] = F.linear(F.gelu(hidden[rows]), w2, b2)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, hidden, w1, w2 = ctx.saved_tensors
        grad_w1, grad_w2 = torch.zeros_like(w1), torch.zeros_like(w2)
        grad_b1 = hidden.new_zeros(hidden.shape[1])
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        for rows in token_groups(x.shape[0], hidden.shape[1]):
            grad_out_g, hidden_g = grad_out[rows], hidden[rows]
            grad_w2.addmm_(grad_out_g.t(), F.gelu(hidden_g))
            grad_hidden = torch.ops.aten.gelu_backward(grad_out_g.mm(w2), hidden_g)
            grad_w1.addmm_(grad_hidden.t(), x[rows])
            grad_b1 += grad_hidden.sum(0)
            if grad_x is not None:
                torch.mm(grad_hidden, w1, out=grad_x[rows])
        return grad_x, grad_w1, grad_b1, grad_w2, grad_out.sum(0)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear over the last dimension.

    In training on float32 on the CPU (no autocast), a fused autograd function keeps one
    hidden tensor for backward instead of two and runs the rest over token groups (see
    :class:`_LinearGeluLinear` and :mod:`.fast_paths`); elsewhere autograd runs the three ops.
    """

    def __init__(self, dims: int, hidden_dims: int):
        super().__init__()
        self.fc1 = nn.Linear(dims, hidden_dims)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dims, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (fast_paths_for(x).fused_mlp
                and type(self.act) is nn.GELU and self.act.approximate == 'none'
                and not recording()):
            out = _LinearGeluLinear.apply(x.reshape(-1, x.shape[-1]), self.fc1.weight,
                                          self.fc1.bias, self.fc2.weight, self.fc2.bias)
            return out.view(*x.shape[:-1], out.shape[-1])
        return self.fc2(self.act(self.fc1(x)))


class ResidualDWConv(nn.Module):
    """CWin's cross-window mixer: ``x + dwconv7x7(x)`` on (B, H, W, C).

    Starts at zero so that loading ImageNet weights into a CWin backbone changes nothing until
    fine-tuning moves it.
    """

    def __init__(self, dims: int, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(dims, dims, kernel_size, padding=kernel_size // 2, groups=dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
