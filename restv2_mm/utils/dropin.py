"""Drop ResTv2 into MMDetection's and MMSegmentation's own configs: which lines change, once.

A user config that inherits a library config (``_base_ = 'mmseg::...'``) swaps the backbone for
``ResTv2`` and sets the fields whose values follow the backbone: the channels of the maps it
returns (a neck's ``in_channels``, a decode head's ``in_channels`` / ``c1_in_channels``), which
maps it returns (``out_indices``, FPN's ``start_level``), the image normalisation its ImageNet
weights expect, ``model.pretrained`` (ResNet weights that MMSegmentation's ``EncoderDecoder``
would hand to the backbone) and ``custom_imports``. :data:`FAMILIES` and the rules below are the
one source for docs/drop-in.md (its table and snippets are checked against them) and for the
drop-in matrix tests (which build configs written by :func:`dropin_config_text`).

- :func:`dropin_config_text` writes such a config (an ordinary config file) for a library
  config; ``tools/dropin_config.py`` is its command line.
- :func:`check_dropin` refuses a config whose channel fields do not fit the maps ResTv2
  returns, naming the field and the value to write, before the raw shape error of the neck.
"""
import functools
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from mmengine.config import Config

# ResTv2's ImageNet training normalisation (RGB, ImageNet mean and std on 0..255 pixels).
IMAGENET_NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)
DEFAULT_CHECKPOINT = 'checkpoints/restv2_{arch}_224.pth'
# Necks whose in_channels list one entry per backbone map.
LIST_NECKS = ('FPN', 'ChannelMapper')
# MMSegmentation decode heads (BaseDecodeHead) that pick maps with ``in_index``.
INDEXED_HEADS = ('FCNHead', 'PSPHead', 'ASPPHead', 'DepthwiseSeparableASPPHead', 'UPerHead',
                 'SegformerHead')
# Heads that read every map the backbone returns, in order, with no ``in_index``.
ALL_MAPS_HEADS = ('Mask2FormerHead', )
KNOWN_TYPES = LIST_NECKS + INDEXED_HEADS + ALL_MAPS_HEADS


@dataclass(frozen=True)
class Family:
    """One row of the drop-in table: a library config family and what it needs."""
    key: str
    name: str
    base: str  # the library config the matrix (and the docs' snippet) inherits
    needs: str  # what the family needs from the backbone, in words
    error: str  # the raw error when the channel lines are left as the base config's


def _conv_error(weight: str, expected: int, got: int) -> str:
    """PyTorch's error for a conv fed the wrong number of channels (… stands for a size)."""
    return (f'RuntimeError: Given groups=1, weight of size {weight}, expected '
            f'input[…, {got}, …, …] to have {expected} channels, but got {got} channels instead')


FPN_LENGTH_ERROR = ('AssertionError at `assert len(inputs) == len(self.in_channels)` '
                    '(mmdet/models/necks/fpn.py)')
INDEX_ERROR = ('IndexError: list index out of range at `inputs = inputs[self.in_index]` '
               '(mmseg/models/decode_heads/decode_head.py)')
FAMILIES: Tuple[Family, ...] = (
    Family('faster_rcnn', 'Faster R-CNN', 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
           'FPN over stages 1-4 (P2-P6)',
           _conv_error('[256, 256, 1, 1]', 256, 96)),
    Family('mask_rcnn', 'Mask R-CNN', 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
           'FPN over stages 1-4 (P2-P6)',
           _conv_error('[256, 256, 1, 1]', 256, 96)),
    Family('cascade_rcnn', 'Cascade R-CNN', 'mmdet::cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py',
           'FPN over stages 1-4 (P2-P6)',
           _conv_error('[256, 256, 1, 1]', 256, 96)),
    Family('retinanet', 'RetinaNet', 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
           'FPN from stage 2 (P3-P7): stages 2-4 returned, start_level 0',
           FPN_LENGTH_ERROR),
    Family('fcos', 'FCOS', 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
           'FPN from stage 2 (P3-P7): stages 2-4 returned, start_level 0; RGB ImageNet '
           'normalisation instead of Caffe\'s BGR',
           FPN_LENGTH_ERROR),
    Family('atss', 'ATSS', 'mmdet::atss/atss_r50_fpn_1x_coco.py',
           'FPN from stage 2 (P3-P7): stages 2-4 returned, start_level 0',
           FPN_LENGTH_ERROR),
    Family('dino', 'DINO', 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
           'ChannelMapper over stages 2-4 (4 levels with its extra conv)',
           _conv_error('[256, 512, 1, 1]', 512, 192)),
    Family('fcn', 'FCN', 'mmseg::fcn/fcn_r50-d8_4xb4-80k_ade20k-512x512.py',
           'stage 4 (decode head) and stage 3 (auxiliary head), single maps',
           INDEX_ERROR),
    Family('pspnet', 'PSPNet', 'mmseg::pspnet/pspnet_r50-d8_4xb4-80k_ade20k-512x512.py',
           'stage 4 (decode head) and stage 3 (auxiliary head), single maps',
           INDEX_ERROR),
    Family('deeplabv3plus', 'DeepLabV3+',
           'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py',
           'stage 4 (ASPP), stage 1 (low-level c1 branch), stage 3 (auxiliary head)',
           INDEX_ERROR),
    Family('upernet', 'UperNet', 'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py',
           'stages 1-4 (decode head), stage 3 (auxiliary head)',
           _conv_error('[512, 256, 1, 1]', 256, 96)),
    Family('segformer', 'Segformer (head)',
           'mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
           'stages 1-4 (the MLP head reads all four)',
           _conv_error('[256, 32, 1, 1]', 32, 96)),
    Family('mask2former', 'Mask2Former',
           'mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py',
           'stages 1-4 (pixel decoder: stage 1 for masks, stages 2-4 deformable attention); '
           "keeps the base's custom_imports of mmdet.models",
           _conv_error('[256, 2048, 1, 1]', 2048, 768)),
)
FAMILY_BY_KEY: Dict[str, Family] = {f.key: f for f in FAMILIES}


def parse_error(documented: str) -> Tuple[str, Optional[str], Optional[str], Optional[str]]:
    """A :attr:`Family.error` as (type, message or None, source line or None, file or None).

    The form is 'Type: message' (… stands for a size) and/or ' at `source line` (file)'.
    """
    parts = re.fullmatch(r'(\w+)(?:: (.*?))?(?: at `(.+)` \((.+)\))?', documented)
    if parts is None:
        raise ValueError(f'not a documented error: {documented!r}')
    return parts.groups()


def restv2_channels(arch: Union[str, dict] = 'tiny',
                    out_indices: Sequence[int] = (0, 1, 2, 3)) -> List[int]:
    """Channels of the maps ``ResTv2(arch=arch, out_indices=out_indices)`` returns, in order."""
    from ..models import ResTv2
    embed_dims = ResTv2._parse_arch(arch)['embed_dims']
    return [embed_dims[i] for i in ResTv2._check_out_indices(out_indices, embed_dims)]


@functools.lru_cache(maxsize=None)
def load_library_config(base: str) -> Config:
    """A library config (``mmdet::...``, ``mmseg::...``) or a file, read as a user config that
    inherits it reads it (mmengine.hub.get_config would parse every metafile of the library
    first, seconds per call)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'inherits.py')
        with open(path, 'w') as f:
            f.write(f'_base_ = {os.path.abspath(base) if "::" not in base else base!r}\n')
        return Config.fromfile(path)


def _load(config: Union[str, Config]) -> Config:
    return config if isinstance(config, Config) else load_library_config(config)


def _heads(model: dict) -> List[Tuple[str, dict]]:
    """(config path, dict) of every neck and decode/auxiliary head of ``model``."""
    parts = []
    for name in ('neck', 'decode_head', 'auxiliary_head'):
        part = model.get(name)
        if isinstance(part, dict):
            parts.append((f'model.{name}', part))
        elif isinstance(part, (list, tuple)):
            parts += [(f'model.{name}.{i}', p) for i, p in enumerate(part)]
    return parts


def _unknown_type_error(field: str, part: dict) -> ValueError:
    return ValueError(
        f'{field} is a {part.get("type")!r}; the drop-in helper knows {", ".join(KNOWN_TYPES)}. '
        'Set its channel fields by hand from restv2_mm.utils.dropin.restv2_channels(arch, '
        'out_indices) (tiny/small/base: 96, 192, 384, 768 for stages 1-4).')


def _positions(index, count: int, field: str) -> List[int]:
    """A head's ``in_index`` (an int or a list, -1 meaning the last) as positions in a tuple of
    ``count`` maps."""
    indices = index if isinstance(index, (list, tuple)) else [index]
    if not all(isinstance(i, int) and -count <= i < count for i in indices):
        raise ValueError(f'{field}.in_index={index!r} picks maps the backbone does not return '
                         f'(it returns {count})')
    return [i % count for i in indices]


def maps_read(part: dict, field: str, count: int) -> List[int]:
    """Positions, in a backbone's tuple of ``count`` maps, that one neck / head reads."""
    kind = part.get('type')
    if kind == 'FPN':
        if part.get('end_level', -1) != -1:
            raise ValueError(f'{field}: the drop-in helper handles FPN with end_level=-1 only, '
                             f'got {part["end_level"]}')
        return list(range(part.get('start_level', 0), count))
    if kind in LIST_NECKS or kind in ALL_MAPS_HEADS:
        return list(range(count))
    if kind in INDEXED_HEADS:
        read = _positions(part.get('in_index', -1), count, field)
        if kind == 'DepthwiseSeparableASPPHead':  # its c1 branch reads the first map
            read = [0] + read
        return read
    raise _unknown_type_error(field, part)


def expected_channel_fields(part: dict, field: str, channels: Sequence[int]) -> dict:
    """The channel fields of one neck / head that reads maps of ``channels`` (in order)."""
    kind = part.get('type')
    if kind in LIST_NECKS or kind in ALL_MAPS_HEADS:
        return dict(in_channels=list(channels))
    if kind in INDEXED_HEADS:
        index = part.get('in_index', -1)
        picked = [channels[i] for i in _positions(index, len(channels), field)]
        fields = dict(in_channels=picked if isinstance(index, (list, tuple)) else picked[0])
        if kind == 'DepthwiseSeparableASPPHead':
            fields['c1_in_channels'] = channels[0]
        return fields
    raise _unknown_type_error(field, part)


def dropin_overrides(config: Union[str, Config], arch: Union[str, dict] = 'tiny',
                     attn_style: str = 'global',
                     checkpoint: Optional[str] = None) -> Tuple[dict, dict]:
    """What a user config inheriting ``config`` must set: (``model`` overrides, other top keys).

    ResTv2 returns exactly the stages the necks and heads read (``out_indices``), as positions
    shift the heads' ``in_index`` and FPN's ``start_level`` follow, and every channel field
    follows the arch. A returned map that nothing read would leave its output LayerNorm
    without a gradient, which DDP refuses (mm's ``find_unused_parameters=False``).
    ``checkpoint`` (default ``checkpoints/restv2_{arch}_224.pth``) goes into
    ``backbone.init_cfg``; ``checkpoint=''`` leaves init_cfg out (training from scratch).
    """
    base = _load(config)
    model = base.model
    base_out = tuple(model.backbone.get('out_indices', (0, 1, 2, 3)))
    if not all(isinstance(i, int) and 0 <= i <= 3 for i in base_out):
        raise ValueError(f'{config}: its backbone returns stages {base_out}; the drop-in helper '
                         'maps stages 0-3 (strides 4-32) to ResTv2\'s four stages')
    parts = _heads(model)
    for field, _ in parts:
        if field.count('.') > 1:
            raise ValueError(f'{field}: lists of heads are not handled by the drop-in helper')
    read = {field: [base_out[p] for p in maps_read(part, field, len(base_out))]
            for field, part in parts}
    out_indices = tuple(sorted({stage for stages in read.values() for stage in stages}))
    channels = restv2_channels(arch, out_indices)

    backbone = dict(_delete_=True, type='ResTv2', arch=arch, attn_style=attn_style,
                    out_indices=out_indices)
    if checkpoint is None:
        checkpoint = DEFAULT_CHECKPOINT.format(arch=arch) if isinstance(arch, str) else ''
    if checkpoint:
        backbone['init_cfg'] = dict(type='Pretrained', checkpoint=checkpoint)
    overrides = {}
    if model.get('pretrained') is not None:
        overrides['pretrained'] = None  # EncoderDecoder would hand it to ResTv2
    norm = model.get('data_preprocessor', {})
    if norm and any(norm.get(k) != v for k, v in IMAGENET_NORM.items()):
        overrides['data_preprocessor'] = dict(IMAGENET_NORM)
    overrides['backbone'] = backbone
    for field, part in parts:
        fields = {}
        kind = part.get('type')
        positions = [out_indices.index(stage) for stage in read[field]]
        if kind == 'FPN' and part.get('start_level', 0) != positions[0]:
            fields['start_level'] = positions[0]
        elif kind in LIST_NECKS + ALL_MAPS_HEADS and len(positions) != len(out_indices):
            raise ValueError(f'{field} ({kind}) reads every map the backbone returns, while other '
                             'heads read other stages: the helper cannot return both')
        if kind in INDEXED_HEADS:
            index = part.get('in_index', -1)
            old = list(index) if isinstance(index, (list, tuple)) else [index]
            new = positions[len(positions) - len(old):]  # DeepLabV3+'s c1 map comes first
            # -1 (the last map) stays -1 where it still is the last one.
            new = [o if o == -1 and n == len(out_indices) - 1 else n for o, n in zip(old, new)]
            if new != old:
                fields['in_index'] = new if isinstance(index, (list, tuple)) else new[0]
        moved = dict(part, **fields)
        overrides[field.split('.', 1)[1]] = dict(
            expected_channel_fields(moved, field, channels), **fields)

    imports = base.get('custom_imports', {}).get('imports', [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    top = dict(custom_imports=dict(imports=imports + ['restv2_mm'], allow_failed_imports=False))
    return overrides, top


def _render(value, indent: int, prefix: int = 0) -> str:
    """``value`` as config source at ``indent`` after ``prefix`` characters (``key=``): dicts as
    ``dict(...)``, on one line where it fits in 100 columns, else one key per line."""
    if not isinstance(value, dict):
        return repr(value)
    items = [f'{k}={_render(v, indent + 4, len(k) + 1)}' for k, v in value.items()]
    flat = f'dict({", ".join(items)})'
    if '\n' not in flat and indent + prefix + len(flat) < 100:
        return flat
    pad = ' ' * (indent + 4)
    return 'dict(\n' + ',\n'.join(pad + item for item in items) + ')'


def dropin_config_text(base: str, arch: Union[str, dict] = 'tiny', attn_style: str = 'global',
                       checkpoint: Optional[str] = None) -> str:
    """An ordinary config file that inherits ``base`` with ResTv2 dropped in."""
    overrides, top = dropin_overrides(base, arch, attn_style, checkpoint)
    lines = [f'_base_ = {base!r}', '']
    lines += [f'{k} = {_render(v, 0, len(k) + 3)}' for k, v in top.items()]
    lines += ['', f'model = {_render(overrides, 0, len("model = "))}', '']
    return '\n'.join(lines)


def _lines(overrides: dict, top: dict) -> List[str]:
    """The fields besides the backbone, as ``field=value`` strings for the docs' table."""
    lines = []
    for key, value in overrides.items():
        if key == 'backbone':
            continue
        if isinstance(value, dict) and key != 'data_preprocessor':
            lines += [f'{key}.{k}={v!r}' for k, v in value.items()]
        else:
            lines.append(f'{key}={_render(value, 0)}')
    imports = top['custom_imports']['imports']
    if imports != ['restv2_mm']:
        lines.append(f'custom_imports.imports={imports!r}')
    return lines


def markdown_table() -> str:
    """docs/drop-in.md's table: per family, what it reads and the lines that follow ResTv2-T."""
    rows = ['| Family | library config (the matrix inherits it) | reads | `out_indices` | '
            'fields that follow the backbone | raw error without them |',
            '|---|---|---|---|---|---|']
    for family in FAMILIES:
        overrides, top = dropin_overrides(family.base)
        fields = '<br>'.join(f'`{line}`' for line in _lines(overrides, top))
        kind, message, line, filename = parse_error(family.error)
        error = f'`{kind}: {message}`' if message else f'`{kind}`'
        if line:
            error += f' at `{line}` ({filename})'
        rows.append(f'| {family.name} | `{family.base}` | {family.needs} | '
                    f'`{overrides["backbone"]["out_indices"]}` | {fields} | {error} |')
    return '\n'.join(rows) + '\n'


def check_dropin(config: Union[str, Config]) -> None:
    """Refuse a config whose channel fields do not fit the maps its ResTv2 backbone returns.

    Checks every neck and decode/auxiliary head of the types the helper knows; the error names
    the field, its value, the value to write and ResTv2's maps. Heads of other types are left
    alone. Raises ValueError; returns None for a consistent config.
    """
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    model = cfg.model
    backbone = model.get('backbone', {})
    if backbone.get('type') != 'ResTv2':
        raise ValueError(f'model.backbone is a {backbone.get("type")!r}, not ResTv2')
    out_indices = tuple(backbone.get('out_indices', (0, 1, 2, 3)))
    arch = backbone.get('arch', 'tiny')
    channels = restv2_channels(arch, out_indices)
    returned = (f'ResTv2(arch={arch!r}, out_indices={out_indices}) returns maps of {channels} '
                'channels')
    problems, read = [], set()
    parts = _heads(model)
    for field, part in parts:
        if part.get('type') not in KNOWN_TYPES:
            continue
        read.update(maps_read(part, field, len(channels)))
        for key, value in expected_channel_fields(part, field, channels).items():
            have = part.get(key)
            have = list(have) if isinstance(have, tuple) else have
            if have != value:
                problems.append(f'{field}.{key}={have!r}: write {key}={value!r}')
    unread = [out_indices[i] for i in range(len(channels)) if i not in read]
    if unread and all(part.get('type') in KNOWN_TYPES for _, part in parts):
        kept = tuple(i for i in out_indices if i not in unread)
        problems.append(
            f'no neck or head reads stage(s) {unread}: their output LayerNorms get no gradient, '
            'which DDP refuses (find_unused_parameters=False); return only the read stages, '
            f'out_indices={kept}, and shift in_index / start_level with them')
    if problems:
        raise ValueError(f'the neck / head fields do not fit the backbone: {returned}; '
                         + '; '.join(problems))
