"""Official ResTv2 ImageNet checkpoints -> the key layout of :class:`restv2_mm.models.ResTv2`.

Official names (see docs/facts): ``stem.*``, ``patch_{2,3,4}.*``, ``stage{1..4}.{i}.*``, plus the
classifier's ``norm.*`` and ``head.*``. Ours: ``stem.*``, ``stages.{s}.downsample.*``,
``stages.{s}.blocks.{i}.*``; inside a block the names are the same as the official ones.
"""
import re
from collections import OrderedDict
from typing import Mapping

import torch

# Keys only the ImageNet classifier uses; detection and segmentation drop them.
CLASSIFIER_PREFIXES = ('norm.', 'head.')

_OFFICIAL_RULES = (
    (re.compile(r'^stage([1-4])\.(\d+)\.'), lambda m: f'stages.{int(m[1]) - 1}.blocks.{m[2]}.'),
    (re.compile(r'^patch_([2-4])\.'), lambda m: f'stages.{int(m[1]) - 1}.downsample.'),
)


def load_checkpoint_file(path: str, map_location='cpu') -> dict:
    """Load a checkpoint from a local path or any URI mmengine knows.

    Local files are read with ``weights_only=True`` (plus the types mmengine's own checkpoints
    hold): checkpoints come from the internet and a pickle may run code. A missing, empty,
    truncated or non-checkpoint file raises an error that names the file and the problem.
    """
    if '://' not in str(path):
        from ..engine.checkpoint_compat import load_local_checkpoint
        return load_local_checkpoint(str(path), map_location=map_location)
    from mmengine.runner.checkpoint import CheckpointLoader
    return CheckpointLoader.load_checkpoint(path, map_location=map_location)


def unwrap_state_dict(checkpoint: Mapping) -> 'OrderedDict[str, torch.Tensor]':
    """The state dict inside ``{'model': sd}``, ``{'state_dict': sd}`` or a bare ``sd``,
    with any ``module.`` (DataParallel / DDP) prefix removed."""
    state_dict = checkpoint
    for key in ('state_dict', 'model'):
        if isinstance(state_dict, Mapping) and isinstance(state_dict.get(key), Mapping):
            state_dict = state_dict[key]
            break
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ValueError('checkpoint holds no state dict (expected a dict of tensors, or one under '
                         "'model' or 'state_dict')")
    out = OrderedDict()
    for k, v in state_dict.items():
        out[k[len('module.'):] if k.startswith('module.') else k] = v
    return out


def is_official_layout(state_dict: Mapping) -> bool:
    return any(k.startswith(('stage1.', 'patch_2.')) for k in state_dict)


def rename_official_key(key: str) -> str:
    """Our name of an official backbone key (``stage3.4.attn.q.weight`` ->
    ``stages.2.blocks.4.attn.q.weight``); other keys (``stem.*``) are returned unchanged."""
    for pattern, repl in _OFFICIAL_RULES:
        key, n = pattern.subn(repl, key, count=1)
        if n:
            break
    return key


def convert_official(state_dict: Mapping) -> 'OrderedDict[str, torch.Tensor]':
    """Rename official keys to ours and drop the classifier; other keys pass unchanged."""
    return OrderedDict((rename_official_key(k), v) for k, v in state_dict.items()
                       if not k.startswith(CLASSIFIER_PREFIXES))


def backbone_state_dict(checkpoint: Mapping, prefix: str = '') -> 'OrderedDict[str, torch.Tensor]':
    """Anything a user may point ``init_cfg`` at -> a state dict in our backbone's layout.

    Accepts the official layouts (wrapped, ``module.``-prefixed or bare), converted copies, and
    whole detector / segmentor checkpoints (their ``backbone.`` part is taken).
    """
    from .released import find_released_layout  # (it imports this module)
    state_dict = unwrap_state_dict(checkpoint)
    layout = find_released_layout(state_dict)
    if layout is not None:
        raise ValueError(
            f"this is one of the authors' released {layout.description} checkpoints, not in the "
            'layout of our configs: convert it with `python tools/convert_official.py SRC DST`, '
            'then test DST with tools/test.py (or load_from), or point init_cfg at DST to start '
            'from its backbone')
    prefix = prefix or ('backbone.' if any(k.startswith('backbone.') for k in state_dict) else '')
    if prefix:
        if not prefix.endswith('.'):
            prefix += '.'
        state_dict = OrderedDict(
            (k[len(prefix):], v) for k, v in state_dict.items() if k.startswith(prefix))
        if not state_dict:
            raise ValueError(f"checkpoint has no keys under the prefix '{prefix}'")
    if is_official_layout(state_dict):
        return convert_official(state_dict)
    return OrderedDict((k, v) for k, v in state_dict.items() if not k.startswith(CLASSIFIER_PREFIXES))
