"""Stage-wise / layer-wise learning-rate decay for models with a ResTv2 backbone.

The authors' released UperNet configs for ResTv2-S and -B fine-tune with
``LearningRateDecayOptimizerConstructor``, ``decay_type='stage_wise'``, ``decay_rate=0.9`` and
``num_layers`` = the block counts per stage, but do not ship the constructor that reads them, and
MMSegmentation's constructor of that name only knows ConvNeXt, BEiT and MAE. This is ours: one
class, registered in both MMDetection's and MMSegmentation's ``OPTIM_WRAPPER_CONSTRUCTORS``::

    optim_wrapper = dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=1.5e-4, betas=(0.9, 0.999), weight_decay=0.05),
        constructor='ResTv2LearningRateDecayOptimizerConstructor',
        paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=(1, 2, 12, 2)))

Every parameter gets a layer id ``l`` in ``0 .. L`` and the lr ``base_lr * decay_rate ** (L - l)``.
ConvNeXt's stage-wise rule, placed onto ResTv2's modules (four stages: ``L = 5`` stage-wise,
``L = sum(depths) + 1`` layer-wise):

===========================================  ==============  =======================
part of the model                            stage_wise      layer_wise
===========================================  ==============  =======================
stem (convs, BNs, PA, LayerNorm)             0               0
patch embedding before stage i (downsample)  0               stage i's first block's
block j of stage i (0-based)                 i + 1           1 + sum(depths[:i]) + j
CWin cross_window_conv of stage i            i + 1           stage i's last block's
output norms norm{i}, neck, heads, the rest  L = stages + 1  L = sum(depths) + 1
===========================================  ==============  =======================

The patch embeddings sit with the stem as in ConvNeXt's stage-wise rule (its downsampling
layers are layer 0); in the layer-wise rule they go with the blocks they feed, as ConvNeXt's
layer-wise rule does. The CWin conv is applied inside its stage, after the stage's last block, so
it takes that stage's (block's) lr. The output norms are downstream-only, like the heads, and
get the base lr.

Weight decay follows ConvNeXt's / MMSegmentation's constructor, which the release names: no
decay on any 1-D parameter, i.e. every normalization weight and bias (LayerNorm, BatchNorm) and
every bias; all other parameters decay by the optimizer's ``weight_decay``.

``paramwise_cfg`` keys: ``decay_rate`` (in (0, 1]), ``decay_type`` ('stage_wise' | 'layer_wise'),
``num_layers`` (optional: the backbone's block counts per stage, checked against it).
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from ..models import ResTv2

DECAY_TYPES = ('stage_wise', 'layer_wise')
PARAMWISE_KEYS = ('decay_rate', 'decay_type', 'num_layers')


def find_restv2_backbone(model: nn.Module) -> ResTv2:
    """The ResTv2 of ``model.backbone``, looking through ``.module`` wrappers (DDP, TTA models).

    A bare ResTv2 is its own backbone.
    """
    current = model
    while True:
        if isinstance(current, ResTv2):
            return current
        backbone = getattr(current, 'backbone', None)
        if isinstance(backbone, ResTv2):
            return backbone
        inner = getattr(current, 'module', None)
        if not isinstance(inner, nn.Module):
            break
        current = inner
    found = type(backbone).__name__ if backbone is not None else 'no `backbone` attribute'
    raise TypeError(
        f'ResTv2LearningRateDecayOptimizerConstructor needs a model whose `backbone` is a ResTv2 '
        f'(also inside a DDP or TTA wrapper); {type(model).__name__} has {found}. For other '
        f"backbones use mmengine's DefaultOptimWrapperConstructor or mmseg's "
        f'LearningRateDecayOptimizerConstructor (ConvNeXt, BEiT, MAE).')


def restv2_layer_ids(backbone: ResTv2, decay_type: str) -> Tuple[Dict[int, int], int]:
    """Layer id of every backbone parameter (by ``id(param)``) and the last layer id ``L``.

    Parameters not in the returned dict (output norms, neck, heads) belong to layer ``L``.
    """
    if decay_type not in DECAY_TYPES:
        raise ValueError(f'decay_type must be one of {DECAY_TYPES}, got {decay_type!r}')
    depths = backbone.depths
    layer_of: Dict[int, int] = {}

    def assign(module: Optional[nn.Module], layer_id: int) -> None:
        if module is not None:
            for param in module.parameters():
                layer_of[id(param)] = layer_id

    assign(backbone.stem, 0)
    for i, stage in enumerate(backbone.stages):
        if decay_type == 'stage_wise':
            assign(stage.downsample, 0)
            for block in stage.blocks:
                assign(block, i + 1)
            assign(stage.cross_window_conv, i + 1)
        else:
            first = 1 + sum(depths[:i])
            assign(stage.downsample, first)
            for j, block in enumerate(stage.blocks):
                assign(block, first + j)
            assign(stage.cross_window_conv, first + len(stage.blocks) - 1)
    last = len(depths) + 1 if decay_type == 'stage_wise' else sum(depths) + 1
    return layer_of, last


class ResTv2LearningRateDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Stage-wise or layer-wise lr decay over a ResTv2 backbone (see the module docstring).

    Param groups: one per (layer id, decay / no decay), each with ``lr``, ``weight_decay``,
    ``lr_scale``, ``layer_id`` and ``group_name``; mmengine's schedulers scale every group's
    own lr, so the ratios between layers hold for the whole schedule. Frozen parameters stay
    in their groups, as with mmengine's default constructor.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = sorted(set(paramwise_cfg) - set(PARAMWISE_KEYS))
        if unknown:
            raise ValueError(f'{type(self).__name__}: unknown paramwise_cfg keys {unknown}; '
                             f'valid keys are {PARAMWISE_KEYS}')
        for key in ('decay_rate', 'decay_type'):
            if key not in paramwise_cfg:
                raise ValueError(f'{type(self).__name__}: paramwise_cfg needs {key!r} '
                                 f"(decay_type one of {DECAY_TYPES}, decay_rate in (0, 1])")
        decay_type = paramwise_cfg['decay_type']
        if decay_type not in DECAY_TYPES:
            raise ValueError(f'paramwise_cfg.decay_type must be one of {DECAY_TYPES}, '
                             f'got {decay_type!r}')
        decay_rate = paramwise_cfg['decay_rate']
        if isinstance(decay_rate, bool) or not isinstance(decay_rate, (int, float)) \
                or not 0 < decay_rate <= 1:
            raise ValueError(f'paramwise_cfg.decay_rate must be a number in (0, 1], '
                             f'got {decay_rate!r}')
        num_layers = paramwise_cfg.get('num_layers')
        if num_layers is not None and (
                not isinstance(num_layers, (tuple, list))
                or not all(isinstance(n, int) and not isinstance(n, bool) for n in num_layers)):
            raise TypeError(
                'paramwise_cfg.num_layers must be the backbone\'s block counts per stage, a tuple '
                f'of ints such as (1, 2, 12, 2) for ResTv2-S, or left out (read from the '
                f'backbone); got {num_layers!r}')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        self.decay_type = decay_type
        self.decay_rate = float(decay_rate)
        self.num_layers = tuple(num_layers) if num_layers is not None else None

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        """Append this model's param groups to ``params`` (mmengine calls it once, on the model)."""
        backbone = find_restv2_backbone(module)
        if self.num_layers is not None and self.num_layers != tuple(backbone.depths):
            raise ValueError(
                f'paramwise_cfg.num_layers={self.num_layers} does not match the ResTv2 backbone\'s '
                f'block counts per stage {tuple(backbone.depths)}; pass those or leave num_layers '
                'out (it is read from the backbone)')
        layer_of, last = restv2_layer_ids(backbone, self.decay_type)
        groups: Dict[Tuple[int, bool], dict] = {}
        for name, param in module.named_parameters():
            layer_id = layer_of.get(id(param), last)
            # ConvNeXt's rule: every 1-D tensor (norm weights and biases, all biases) is exempt.
            decays = param.ndim > 1
            key = (layer_id, decays)
            if key not in groups:
                scale = self.decay_rate**(last - layer_id)
                groups[key] = dict(
                    params=[], lr=self.base_lr * scale, lr_scale=scale, layer_id=layer_id,
                    group_name=f'layer_{layer_id}_{"decay" if decays else "no_decay"}')
                if self.base_wd is not None:
                    groups[key]['weight_decay'] = self.base_wd if decays else 0.
                elif not decays:
                    groups[key]['weight_decay'] = 0.
            groups[key]['params'].append(param)
        ordered = OrderedDict(sorted(groups.items(), key=lambda item: (item[0][0], not item[0][1])))
        params.extend(ordered.values())
        self._log_groups(list(ordered.values()), last)

    def _log_groups(self, groups: List[dict], last: int) -> None:
        lines = [f'{self.decay_type} lr decay {self.decay_rate} over layers 0..{last} '
                 f'(base lr {self.base_lr:g}):']
        for group in groups:
            wd = group.get('weight_decay', 'default')
            lines.append(f'  {group["group_name"]:<20} lr {group["lr"]:.4g} '
                         f'(x{group["lr_scale"]:.4f}) weight decay {wd} '
                         f'{len(group["params"])} tensors, '
                         f'{sum(p.numel() for p in group["params"])} params')
        print_log('\n'.join(lines), logger='current')
