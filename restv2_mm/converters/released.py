"""The authors' released fine-tuned ResTv2 models -> the key layout of this project's configs.

Two releases (see docs/released-models.md):

- Detectron2 Mask R-CNN FPN 3x, T/S/B: ``{'model': sd, 'trainer'|'optimizer'|...: ...}`` in a
  ``.pth`` (or ``{'model': {name: numpy array}}`` in a ``.pkl``). The backbone is under
  ``backbone.bottom_up.`` with the ImageNet names plus output norms ``norm_{k}.0.*`` (k = 1..4,
  LayerNorms inside an ``nn.Sequential``); FPN convs are named by log2 of their stride
  (``fpn_lateral2`` is the stride-4 level); then the RPN, box and mask heads.
- MMSegmentation 0.x UperNet 512x512 160k, T/S/B: ``{'state_dict': sd, 'meta': ...}``. The
  backbone is under ``backbone.`` with output norms ``norm_{k}.*``; ``decode_head.*`` (UPerHead)
  and ``auxiliary_head.*`` (FCNHead) are named as in MMSegmentation 1.x.

Ours (this project's Mask R-CNN / UperNet configs): ``backbone.stem.*``,
``backbone.stages.{s}.downsample.*``, ``backbone.stages.{s}.blocks.{i}.*``, output norms
``backbone.norm{k-1}.*``; mmdet's ``neck.*``, ``rpn_head.*``, ``roi_head.*``; mmseg's heads as
they are. Every tensor is copied unchanged (no reshaping, no reordering of channels).

Nothing is dropped in silence: a key that no rule below maps raises :class:`UnknownKeysError`;
the only keys left out are Detectron2's non-persistent buffers that old files may still hold
(``pixel_mean``, ``pixel_std``, anchor cell templates).
"""
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .official import CLASSIFIER_PREFIXES, rename_official_key

DETECTION, SEGMENTATION, BACKBONE = 'detection', 'segmentation', 'backbone'
# Tensors a whole released file must hold (docs/released-checkpoints facts, §0.4): the backbone
# (278 / 410 / 538 tensors with its output norms) + 42 Mask R-CNN or 82 UperNet tensors.
RELEASED_TENSORS = {
    DETECTION: {'tiny': 320, 'small': 452, 'base': 580},
    SEGMENTATION: {'tiny': 360, 'small': 492, 'base': 620},
}
RELEASED_ARCHS = ('tiny', 'small', 'base')


class ConversionError(ValueError):
    """A file the converter will not convert; the message names the problem and what to do."""


class ResTv1CheckpointError(ConversionError):
    """The file holds a ResTv1 model (the release's 'ResTv2-S' detection link may give one)."""


class UnknownKeysError(ConversionError):
    """Keys that no rule of the recognised layout maps (never dropped in silence)."""


class TensorCountError(ConversionError):
    """The file does not hold the number of tensors its layout must have."""


class ArchMismatchError(ConversionError):
    """The file's arch (T/S/B, from its block counts) is not the one ``--config`` builds."""


class TaskMismatchError(ConversionError):
    """A detection file given a segmentation config, or the other way round."""


class UnknownArchError(ConversionError):
    """Block counts / widths that match no arch of ``ResTv2.arch_zoo``."""


class ModelMismatchError(ConversionError):
    """The converted tensors do not load with ``strict=True`` into the config's model."""


_Rule = Tuple['re.Pattern', Callable[['re.Match'], str]]


def _rule(pattern: str, repl) -> _Rule:
    return re.compile(pattern), (repl if callable(repl) else (lambda m, r=repl: r))


def _stage_index(offset: int):
    return lambda m: str(int(m[1]) - offset)


# Detectron2's FPN and heads (facts §1.3): D2 prefix -> mmdet prefix; the suffix
# (weight / bias) is kept.
_D2_HEAD_RULES: Sequence[_Rule] = (
    # fpn_lateral{2..5}: 2 = log2(stride 4), i.e. our level 0
    _rule(r'^backbone\.fpn_lateral([2-5])\.',
          lambda m: f'neck.lateral_convs.{int(m[1]) - 2}.conv.'),
    _rule(r'^backbone\.fpn_output([2-5])\.', lambda m: f'neck.fpn_convs.{int(m[1]) - 2}.conv.'),
    _rule(r'^proposal_generator\.rpn_head\.conv\.', 'rpn_head.rpn_conv.'),
    _rule(r'^proposal_generator\.rpn_head\.objectness_logits\.', 'rpn_head.rpn_cls.'),
    _rule(r'^proposal_generator\.rpn_head\.anchor_deltas\.', 'rpn_head.rpn_reg.'),
    _rule(r'^roi_heads\.box_head\.fc([12])\.',
          lambda m: f'roi_head.bbox_head.shared_fcs.{int(m[1]) - 1}.'),
    _rule(r'^roi_heads\.box_predictor\.cls_score\.', 'roi_head.bbox_head.fc_cls.'),
    _rule(r'^roi_heads\.box_predictor\.bbox_pred\.', 'roi_head.bbox_head.fc_reg.'),
    _rule(r'^roi_heads\.mask_head\.mask_fcn([1-4])\.',
          lambda m: f'roi_head.mask_head.convs.{int(m[1]) - 1}.conv.'),
    _rule(r'^roi_heads\.mask_head\.deconv\.', 'roi_head.mask_head.upsample.'),
    _rule(r'^roi_heads\.mask_head\.predictor\.', 'roi_head.mask_head.conv_logits.'),
)
# Non-persistent buffers of Detectron2 models that files written by old versions may hold; D2's
# own loader ignores them too (facts §1.1). mmdet computes the same values from its config.
_D2_BUFFERS = re.compile(r'^(pixel_mean|pixel_std|proposal_generator\.anchor_generator\.'
                         r'cell_anchors\.\d+)$')
# mmseg 0.x heads: the same names in MMSegmentation 1.x (facts §4.2).
_MMSEG_HEAD_RULES: Sequence[_Rule] = (
    _rule(r'^(decode_head|auxiliary_head)\.', lambda m: m[0]),
)
# The downstream output norms after each stage: D2 ``norm_{k}.0`` (inside nn.Sequential),
# mmseg 0.x ``norm_{k}``, ours ``norm{k-1}``.
_D2_OUTPUT_NORM = _rule(r'^norm_([1-4])\.0\.', lambda m: f'norm{int(m[1]) - 1}.')
_MMSEG_OUTPUT_NORM = _rule(r'^norm_([1-4])\.(?=(weight|bias)$)', lambda m: f'norm{int(m[1]) - 1}.')


@dataclass(frozen=True)
class ReleasedLayout:
    """One released file layout: how to tell it, and how its keys map to ours."""
    name: str
    task: str
    description: str
    backbone_prefix: str
    output_norm: _Rule
    head_rules: Sequence[_Rule]
    ignored: Optional['re.Pattern'] = None

    def matches(self, keys: Sequence[str]) -> bool:
        has_backbone = any(k.startswith(self.backbone_prefix) for k in keys)
        has_heads = any(pattern.match(k) for k in keys for pattern, _ in self.head_rules)
        return has_backbone and has_heads


DETECTRON2 = ReleasedLayout(
    name='detectron2', task=DETECTION, description='Detectron2 Mask R-CNN FPN',
    backbone_prefix='backbone.bottom_up.', output_norm=_D2_OUTPUT_NORM,
    head_rules=_D2_HEAD_RULES, ignored=_D2_BUFFERS)
MMSEG0 = ReleasedLayout(
    name='mmseg0', task=SEGMENTATION, description='MMSegmentation 0.x UperNet',
    backbone_prefix='backbone.', output_norm=_MMSEG_OUTPUT_NORM, head_rules=_MMSEG_HEAD_RULES)
RELEASED_LAYOUTS = (DETECTRON2, MMSEG0)


def find_released_layout(state_dict: Mapping) -> Optional[ReleasedLayout]:
    """The released layout the keys are in, or None (an ImageNet file, or already ours)."""
    keys = list(state_dict)
    if any(k.startswith('backbone.stages.') for k in keys):
        return None  # this project's own layout (a trained mmdet / mmseg checkpoint)
    for layout in RELEASED_LAYOUTS:
        if layout.matches(keys):
            return layout
    return None


def restv1_evidence(state_dict: Mapping) -> List[str]:
    """Keys that show a ResTv1 network (empty for ResTv2).

    ResTv1's attention has ``attn.transform_conv`` and no ``attn.up.0``, and its stem is
    ``stem.conv1``/``bn1``/... where ResTv2's is ``stem.proj.*`` (release ``rest.py``).
    """
    keys = list(state_dict)
    markers = [k for k in keys
               if '.attn.transform_conv.' in k or re.search(r'(^|\.)stem\.conv1\.', k)]
    if markers:
        return markers[:3]
    blocks = [k for k in keys
              if re.search(r'(^|\.)(stage[1-4]\.|stages\.\d\.blocks\.)\d+\.attn\.', k)]
    if blocks and not any('.attn.up.0.' in k for k in blocks):
        return blocks[:3]
    return []


def check_not_restv1(state_dict: Mapping, path: str) -> None:
    evidence = restv1_evidence(state_dict)
    if evidence:
        raise ResTv1CheckpointError(
            f'{path} holds a ResTv1 model, not ResTv2 (keys such as {", ".join(evidence)}: ResTv1 '
            "attention has 'attn.transform_conv' and a 'stem.conv1' stem; ResTv2 has "
            "'attn.up.0' and 'stem.proj'). The release's ResTv2-S Mask R-CNN link is the same as "
            "its ResTv1-S one and may give this file. restv2_mm implements ResTv2 only.")


def _apply(rules: Sequence[_Rule], key: str) -> Optional[str]:
    for pattern, repl in rules:
        match = pattern.match(key)
        if match:
            return repl(match) + key[match.end():]
    return None


def convert_released(state_dict: Mapping, layout: ReleasedLayout
                     ) -> Tuple['OrderedDict[str, torch.Tensor]', List[str]]:
    """(our state dict, keys left out as known non-persistent buffers) of a released model.

    Raises :class:`UnknownKeysError` for keys that match no rule of ``layout``.
    """
    out: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    unknown, ignored, origin = [], [], {}
    for key, value in state_dict.items():
        if layout.ignored is not None and layout.ignored.match(key):
            ignored.append(key)
            continue
        new = _apply(layout.head_rules, key)
        if new is None and key.startswith(layout.backbone_prefix):
            name = key[len(layout.backbone_prefix):]
            if name.startswith(CLASSIFIER_PREFIXES):
                unknown.append(key)  # no released fine-tuned model has a classifier
                continue
            norm = _apply((layout.output_norm, ), name)
            name = norm if norm is not None else rename_official_key(name)
            new = 'backbone.' + name
        if new is None:
            unknown.append(key)
            continue
        if new in out:
            raise UnknownKeysError(f'{origin[new]!r} and {key!r} both map to {new!r}')
        origin[new] = key
        out[new] = value
    if unknown:
        more = f' and {len(unknown) - 8} more' if len(unknown) > 8 else ''
        shown = ', '.join(unknown[:8]) + more
        raise UnknownKeysError(
            f'{len(unknown)} key(s) of this {layout.description} checkpoint match no known '
            f'tensor of the released model: {shown}. Nothing is dropped in silence; if the file '
            'holds a different model, it cannot be converted for these configs.')
    return out, ignored


def stage_layout(backbone: Mapping) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(blocks per stage, width per stage) of a backbone state dict in our layout."""
    depths, dims = [0, 0, 0, 0], [0, 0, 0, 0]
    for key, value in backbone.items():
        match = re.match(r'^stages\.([0-3])\.blocks\.(\d+)\.', key)
        if match:
            stage, block = int(match[1]), int(match[2])
            depths[stage] = max(depths[stage], block + 1)
            if block == 0 and key.endswith('.norm1.weight'):
                dims[stage] = int(value.shape[0])
    return tuple(depths), tuple(dims)


def identify_arch(backbone: Mapping) -> str:
    """The ``ResTv2.arch_zoo`` name of a backbone state dict in our layout (block counts and
    widths tell T / S / B / L apart: T, S and B have the same widths)."""
    from ..models.restv2 import ResTv2
    depths, dims = stage_layout(backbone)
    for name, setting in ResTv2.arch_zoo.items():
        if tuple(setting['depths']) == depths and tuple(setting['embed_dims']) == dims:
            return name
    known = '; '.join(f"{n}: depths {tuple(s['depths'])}, widths {tuple(s['embed_dims'])}"
                      for n, s in ResTv2.arch_zoo.items())
    raise UnknownArchError(f'the backbone has blocks per stage {depths} and widths {dims}, which '
                           f'is no ResTv2 arch ({known})')


def strip_prefix(state_dict: Mapping, prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
