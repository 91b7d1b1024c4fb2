"""Where a ResTv2 backbone's ImageNet weights come from, and whether they can be ResTv2's.

A backbone gets its weights from ``init_cfg=dict(type='Pretrained', checkpoint=...)`` or from the
deprecated ``pretrained=...`` argument, which MMSegmentation's ``EncoderDecoder`` fills from
``model.pretrained``. Most ResNet-based mm configs set ``model.pretrained`` (e.g.
``'open-mmlab://resnet50_v1c'``), so a config that inherits one and swaps the backbone hands
ResNet weights to ResTv2. Names are judged here before anything is downloaded; the content of
a local file is judged when it is loaded.
"""
import os
import re
from typing import Mapping, Optional
from urllib.parse import urlparse

# Model-zoo names resolved by mmengine's CheckpointLoader: mm's and torchvision's zoos, none of
# which holds a ResTv2 checkpoint.
FOREIGN_ZOO_SCHEMES = {
    'open-mmlab://': "MMCV's model zoo",
    'openmmlab://': "MMCV's model zoo",
    'mmcls://': "MMClassification's model zoo",
    'torchvision://': "torchvision's model zoo",
    'modelzoo://': "torchvision's model zoo",
}
# Download hosts of those zoos (ResNet, Swin, MiT, ... checkpoints; no ResTv2).
FOREIGN_HOSTS = {
    'download.openmmlab.com': 'the OpenMMLab model zoo',
    'download.pytorch.org': "torchvision's model zoo",
}
INIT_CFG_FIELD = 'model.backbone.init_cfg.checkpoint'
PRETRAINED_FIELD = ('`pretrained` (model.pretrained, which MMSegmentation\'s EncoderDecoder '
                    'passes to the backbone, or model.backbone.pretrained)')
EXAMPLE_CHECKPOINT = 'checkpoints/restv2_tiny_224.pth'
# A key only a ResTv2 state dict has, in our layout (after conversion of the official one).
_RESTV2_KEY = re.compile(r'^stages\.\d+\.blocks\.\d+\.attn\.')


def pretrained_file_missing(path) -> bool:
    """True when a checkpoint path names no local file (URIs are left to the loader)."""
    return not path or ('://' not in str(path) and not os.path.isfile(path))


def missing_weights_message(path, field: str = INIT_CFG_FIELD) -> str:
    """What to do when the checkpoint named by ``field`` is no file."""
    from_init_cfg = field == INIT_CFG_FIELD
    message = (f'ResTv2 ImageNet weights not found at {path!r} ({field}). Put the official '
               'checkpoint of this arch there (e.g. restv2_tiny_224.pth from the ResTv2 release: '
               'its official layout loads as is), or write an mm-style copy with '
               '`python tools/convert_official.py SRC DST` and point the config at DST. '
               'To train from scratch on purpose, add `--cfg-options '
               f'{"model.backbone.init_cfg" if from_init_cfg else "model.pretrained"}=None`.')
    if not from_init_cfg:
        message += (' If the path came from a base config (another network\'s weights), write '
                    '`model.pretrained=None` and give ResTv2 weights in model.backbone.init_cfg.')
    return message


def foreign_weights_reason(path) -> Optional[str]:
    """Why the name ``path`` cannot hold ResTv2 weights, or None when it may.

    Judged from the name alone: model-zoo schemes (``open-mmlab://``, ``torchvision://``, ...)
    and the download hosts of those zoos hold no ResTv2 checkpoint. Nothing is downloaded.
    """
    path = str(path)
    for scheme, zoo in FOREIGN_ZOO_SCHEMES.items():
        if path.startswith(scheme):
            return f'{scheme} names a checkpoint of {zoo}, which has no ResTv2'
    if path.startswith(('http://', 'https://')):
        host = urlparse(path).hostname or ''
        if host in FOREIGN_HOSTS:
            return f'{host} is {FOREIGN_HOSTS[host]}, which has no ResTv2'
    return None


def foreign_weights_message(path, reason: str, field: str = INIT_CFG_FIELD) -> str:
    """The error for weights that are not ResTv2's: where they came from and what to write."""
    if field == INIT_CFG_FIELD:
        return (f'{field}={path!r} is not ResTv2 weights ({reason}). Point it at ResTv2 ImageNet '
                f'weights (e.g. {EXAMPLE_CHECKPOINT!r}), or set model.backbone.init_cfg=None to '
                'train from scratch.')
    return (f'ResTv2 got {field}={path!r}, which is not ResTv2 weights ({reason}). The value '
            'usually comes from the ResNet base config your config inherits: set '
            '`pretrained=None` in your `model = dict(...)` (or '
            '`--cfg-options model.pretrained=None`) and give ResTv2 weights as '
            '`backbone=dict(..., init_cfg=dict(type=\'Pretrained\', '
            f'checkpoint={EXAMPLE_CHECKPOINT!r}))`. Nothing was downloaded.')


def check_restv2_state_dict(state_dict: Mapping, source, field: str = INIT_CFG_FIELD) -> None:
    """Raise if ``state_dict`` (already in our key layout) has no ResTv2 tensor at all.

    A checkpoint of another ResTv2 arch passes here and is refused key by key by
    :meth:`ResTv2.load_pretrained_state_dict`; this catches another network's file (a ResNet
    inherited from a base config), whose keys would otherwise be listed as hundreds of
    missing and unexpected ones.
    """
    if any(_RESTV2_KEY.match(k) for k in state_dict):
        return
    first = ', '.join(list(state_dict)[:4])
    raise ValueError(foreign_weights_message(
        source, f'none of its tensors is a ResTv2 one; its first keys are {first}', field))
