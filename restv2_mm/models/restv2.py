"""ResTv2 backbone for MMDetection 3.x and MMSegmentation 1.x (one class serves both)."""
import inspect
import math
import warnings
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from ..converters import backbone_state_dict, load_checkpoint_file
from ..utils.weights import (INIT_CFG_FIELD, PRETRAINED_FIELD, check_restv2_state_dict,
                             foreign_weights_message, foreign_weights_reason,
                             missing_weights_message, pretrained_file_missing)
from .attention import EMSAv2
from .fast_paths import fast_paths_for, recording
from .layers import ConvStem, Mlp, PatchEmbed, ResidualDWConv, token_groups

ATTN_STYLES = ('global', 'win', 'cwin', 'hwin')


class ResTv2Block(nn.Module):
    """Pre-norm transformer block on (B, H, W, C): x + EMSAv2(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, embed_dims: int, num_heads: int, sr_ratio: int, mlp_ratio: float = 4.,
                 drop_path: float = 0., window_size: Optional[int] = None, with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.attn = EMSAv2(embed_dims, num_heads, sr_ratio, window_size)
        self.norm2 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_forward` without autograd: the MLP half runs over groups of tokens.

        Each token's LN -> MLP -> residual depends on that token only, so groups give the same
        numbers (bit-identical, measured) while the (tokens, 4C) hidden tensor of a group stays
        in cache and is reused by the allocator (see :data:`layers.HIDDEN_PER_GROUP`): stage 1's
        MLP at 1280x800 measured 2x faster in fp32 and 2.8x in bf16 on CPU. CPU only
        (:mod:`.fast_paths`): a GPU would run a dozen small kernels where one does.
        """
        x = x + self.attn(self.norm1(x))
        tokens = x.reshape(-1, x.shape[-1])  # (B * H * W, C)
        groups = token_groups(tokens.shape[0], self.mlp.fc1.out_features)
        if len(groups) == 1:
            return x + self.mlp(self.norm2(x))
        out = torch.empty_like(tokens)
        for rows in groups:
            out[rows] = tokens[rows] + self.mlp(self.norm2(tokens[rows]))
        return out.view_as(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        if fast_paths_for(x).token_groups and not recording():
            return self._forward_inference(x)
        return self._forward(x)


class ResTv2Stage(nn.Module):
    """Optional stride-2 patch embedding, ``depth`` blocks and (CWin) a residual 7x7 conv."""

    def __init__(self, blocks: Sequence[ResTv2Block], downsample: Optional[nn.Module] = None,
                 cross_window_conv: Optional[nn.Module] = None):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)
        self.cross_window_conv = cross_window_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        if self.cross_window_conv is not None:
            x = self.cross_window_conv(x)
        return x


class ResTv2(BaseModule):
    """ResTv2 backbone ("ResT V2: Simpler, Faster and Stronger", NeurIPS 2022).

    Returns a tuple of (B, C_i, ceil(H / 2^(i+2)), ceil(W / 2^(i+2))) maps, one per
    ``out_indices`` entry, each through its own LayerNorm over channels.

    Args:
        arch: 'tiny' | 'small' | 'base' | 'large', or a dict with ``embed_dims``, ``depths``,
            ``num_heads`` (and optionally ``sr_ratios``, ``mlp_ratio``).
        attn_style: 'global' | 'win' | 'cwin' | 'hwin' (paper Table 3).
            win: every EMSAv2 inside non-overlapping windows; cwin: win plus a residual
            depthwise 7x7 conv after each stage's last block; hwin: win, but each stage's last
            block attends globally; global: every EMSAv2 over the whole map.
        window_size: window side in tokens, an int or one per stage (window styles only);
            ``None`` means (64, 32, 16, 8), the paper's.
        in_channels: input image channels.
        out_indices: stages whose maps are returned (increasing, from 0..3 for the zoo archs).
        drop_path_rate: stochastic depth, rising linearly over all blocks.
        frozen_stages: -1 freezes nothing; 0 the stem; n the stem and stages 1..n.
        norm_eval: keep BatchNorm layers (the stem's) in eval mode while training.
        with_cp: activation checkpointing per block (saves memory, costs a re-forward).
        pretrained: deprecated alias of ``init_cfg=dict(type='Pretrained', checkpoint=PATH)``
            (one warning), as in mmdet/mmseg backbones; MMSegmentation's ``EncoderDecoder``
            fills it from ``model.pretrained``. Another network's weights (a model-zoo name
            such as ``open-mmlab://resnet50_v1c`` inherited from a ResNet base config) are
            refused with the fix, before any download.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads official ImageNet weights
            (any of their layouts), converted copies or a detector's backbone.
    """

    arch_zoo: Dict[str, dict] = {
        'tiny': dict(embed_dims=(96, 192, 384, 768), depths=(1, 2, 6, 2), num_heads=(1, 2, 4, 8)),
        'small': dict(embed_dims=(96, 192, 384, 768), depths=(1, 2, 12, 2), num_heads=(1, 2, 4, 8)),
        'base': dict(embed_dims=(96, 192, 384, 768), depths=(1, 3, 16, 3), num_heads=(1, 2, 4, 8)),
        'large': dict(embed_dims=(128, 256, 512, 1024), depths=(2, 3, 16, 2),
                      num_heads=(2, 4, 8, 16)),
    }
    default_sr_ratios = (8, 4, 2, 1)
    default_window_size = (64, 32, 16, 8)

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 attn_style: str = 'global',
                 window_size: Union[None, int, Sequence[int]] = None,
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: float = 0.,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None,
                 **unknown):
        if unknown:
            raise TypeError(self._unknown_arguments_message(unknown))
        init_cfg, weights_field = self._weights_init_cfg(pretrained, init_cfg)
        super().__init__(init_cfg=init_cfg)
        self.weights_field = weights_field  # the config field that named the checkpoint
        arch_settings = self._parse_arch(arch)
        self.embed_dims = tuple(arch_settings['embed_dims'])
        self.depths = tuple(arch_settings['depths'])
        self.num_heads = tuple(arch_settings['num_heads'])
        self.sr_ratios = tuple(arch_settings.get('sr_ratios', self.default_sr_ratios))
        mlp_ratio = arch_settings.get('mlp_ratio', 4.)
        num_stages = len(self.depths)
        for name in ('embed_dims', 'num_heads', 'sr_ratios'):
            if len(getattr(self, name)) != num_stages:
                raise ValueError(f'arch: {name} has {len(getattr(self, name))} entries, '
                                 f'depths has {num_stages}')

        if attn_style not in ATTN_STYLES:
            raise ValueError(f"attn_style must be one of {ATTN_STYLES}, got '{attn_style}'")
        self.attn_style = attn_style
        if window_size is None:
            window_size = self.default_window_size[:num_stages]
        if isinstance(window_size, int):
            window_size = (window_size, ) * num_stages
        window_size = tuple(window_size)
        if len(window_size) != num_stages or not all(
                isinstance(w, int) and w > 0 for w in window_size):
            raise ValueError(f'window_size must be a positive int or {num_stages} positive ints '
                             f'(one per stage), got {window_size}')
        self.window_size = window_size

        self.out_indices = self._check_out_indices(out_indices, self.embed_dims)
        if not (isinstance(frozen_stages, int) and -1 <= frozen_stages <= num_stages):
            raise ValueError(
                f'frozen_stages must be an int in [-1, {num_stages}] (-1: nothing, 0: the stem, '
                f'n: the stem and stages 1..n; this arch has {num_stages} stages), '
                f'got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        self.stem = ConvStem(in_channels, self.embed_dims[0])
        dpr = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(self.depths):
            dims = self.embed_dims[i]
            blocks = []
            for j in range(depth):
                is_last = j == depth - 1
                windowed = attn_style != 'global' and not (attn_style == 'hwin' and is_last)
                blocks.append(ResTv2Block(
                    dims, self.num_heads[i], self.sr_ratios[i], mlp_ratio,
                    drop_path=dpr[sum(self.depths[:i]) + j],
                    window_size=window_size[i] if windowed else None, with_cp=with_cp))
            self.stages.append(ResTv2Stage(
                blocks,
                downsample=PatchEmbed(self.embed_dims[i - 1], dims) if i > 0 else None,
                cross_window_conv=ResidualDWConv(dims) if attn_style == 'cwin' else None))
        # Output norms are not part of the ImageNet network; they start at identity (1, 0).
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(self.embed_dims[i], eps=1e-6))
        self._freeze_stages()

    @staticmethod
    def _check_out_indices(out_indices, embed_dims: Sequence[int]) -> tuple:
        """``out_indices`` as a tuple, refused unless increasing stage indices of this arch."""
        num_stages = len(embed_dims)
        valid = tuple(range(num_stages))
        indices = tuple(out_indices) if isinstance(out_indices, (list, tuple)) else ()
        if (not indices or not all(isinstance(i, int) and i in valid for i in indices)
                or list(indices) != sorted(set(indices))):
            stages = ', '.join(f'{i}: {c} channels at stride {4 * 2 ** i}'
                               for i, c in enumerate(embed_dims))
            raise ValueError(
                f'out_indices must be increasing stage indices from {valid} (stage {stages}), '
                f'got {out_indices!r}. The maps come out in stage order, one per index; the '
                'neck\'s or head\'s in_channels must list the same stages.')
        return indices

    @classmethod
    def _unknown_arguments_message(cls, unknown: dict) -> str:
        own = [name for name in inspect.signature(cls.__init__).parameters
               if name not in ('self', 'unknown')]
        return (f'ResTv2 has no argument {", ".join(sorted(unknown))}. Arguments like these come '
                "from the backbone of the base config (ResNet's depth, num_stages, strides, "
                'norm_cfg, style, ...), which mmengine merges into yours: add `_delete_=True` to '
                'model.backbone so that only ResTv2\'s arguments remain. ResTv2\'s arguments: '
                f'{", ".join(own)}.')

    @staticmethod
    def _weights_init_cfg(pretrained: Optional[str], init_cfg) -> tuple:
        """(init_cfg with the deprecated ``pretrained`` folded in, the field naming the weights).

        Weights that cannot be ResTv2's (another network's model zoo, usually inherited from a
        ResNet base config's ``model.pretrained``) are refused here, before any download.
        """
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
            checkpoint = init_cfg.get('checkpoint')
            reason = foreign_weights_reason(checkpoint)
            if reason:
                raise ValueError(foreign_weights_message(checkpoint, reason, INIT_CFG_FIELD))
        if pretrained is None:
            return init_cfg, INIT_CFG_FIELD
        if not isinstance(pretrained, str):
            raise TypeError(f'pretrained must be a checkpoint path (str) or None, got '
                            f'{type(pretrained).__name__}')
        reason = foreign_weights_reason(pretrained)
        if reason:
            raise ValueError(foreign_weights_message(pretrained, reason, PRETRAINED_FIELD))
        if init_cfg is not None:
            raise ValueError(
                f'ResTv2 got both {PRETRAINED_FIELD}={pretrained!r} and init_cfg={init_cfg!r}; '
                'give the weights once: keep model.backbone.init_cfg and set '
                'model.pretrained=None.')
        warnings.warn(
            f'ResTv2: pretrained={pretrained!r} is deprecated (as in mmdet/mmseg backbones); it is '
            f"loaded as init_cfg=dict(type='Pretrained', checkpoint={pretrained!r}). Write that "
            'in model.backbone.init_cfg and set model.pretrained=None.', FutureWarning,
            stacklevel=3)
        return dict(type='Pretrained', checkpoint=pretrained), PRETRAINED_FIELD

    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            if arch not in cls.arch_zoo:
                raise ValueError(f"arch must be one of {tuple(cls.arch_zoo)} or a dict, got '{arch}'")
            return cls.arch_zoo[arch]
        if isinstance(arch, dict):
            required = {'embed_dims', 'depths', 'num_heads'}
            allowed = required | {'sr_ratios', 'mlp_ratio'}
            if not required <= set(arch) or not set(arch) <= allowed:
                raise ValueError(f'a custom arch needs the keys {sorted(required)} (optional: '
                                 f"'sr_ratios', 'mlp_ratio'), got {sorted(arch)}")
            return arch
        raise ValueError(f'arch must be one of {tuple(cls.arch_zoo)} or a dict, got {type(arch)}')

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> tuple:
        """(B, 3, H, W) -> tuple of (B, C_i, H_i, W_i)."""
        x = self.stem(x)  # (B, H/4, W/4, C)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)

    # ------------------------------------------------------------------ training mode
    def _freeze_stages(self) -> None:
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.stem)
        for i in range(self.frozen_stages):
            frozen.append(self.stages[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ weights
    def init_weights(self) -> None:
        if self.init_cfg is None or self.init_cfg.get('type') != 'Pretrained':
            self._init_from_scratch()
            if self.init_cfg is not None:
                super().init_weights()
            return
        path = self.init_cfg.get('checkpoint')
        field = getattr(self, 'weights_field', INIT_CFG_FIELD)
        if pretrained_file_missing(path):
            raise FileNotFoundError(missing_weights_message(path, field))
        self._init_from_scratch()  # output norms and CWin convs are not in the checkpoint
        state_dict = backbone_state_dict(load_checkpoint_file(path),
                                         prefix=self.init_cfg.get('prefix', ''))
        check_restv2_state_dict(state_dict, path, field)
        self.load_pretrained_state_dict(state_dict, source=path)
        print_log(f'ResTv2: loaded {len(state_dict)} tensors from {path}', logger='current')

    def load_pretrained_state_dict(self, state_dict: dict, source: str = 'checkpoint') -> None:
        """Load backbone weights, failing on any missing, unexpected or mis-shaped tensor."""
        own = self.state_dict()
        # Parts that only exist downstream: the output norms and CWin's convs.
        downstream_only = tuple(f'norm{i}.' for i in self.out_indices)
        missing = [k for k in own if k not in state_dict
                   and not k.startswith(downstream_only) and '.cross_window_conv.' not in k]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = [f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}'
                      for k in state_dict if k in own and state_dict[k].shape != own[k].shape]
        problems = []
        for label, keys in (('missing', missing), ('unexpected', unexpected),
                            ('shape mismatch', mismatched)):
            if keys:
                more = f' (+{len(keys) - 5} more)' if len(keys) > 5 else ''
                problems.append(f'{label}: {keys[:5]}{more}')
        if problems:
            raise RuntimeError(
                f'{source} does not fit ResTv2(embed_dims={self.embed_dims}, depths={self.depths}):'
                f' ' + '; '.join(problems) + '. Is it the checkpoint of another arch?')
        self.load_state_dict(state_dict, strict=False)

    def _init_from_scratch(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, _BatchNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResidualDWConv):
                m.reset_parameters()
