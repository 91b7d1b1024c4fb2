"""Config helpers shared by the tools."""
import os.path as osp
from typing import Iterator, Optional, Tuple

from mmengine.config import Config

from .weights import (INIT_CFG_FIELD, foreign_weights_message, foreign_weights_reason,
                      missing_weights_message, pretrained_file_missing)

SCOPES = ('mmdet', 'mmseg')


def load_tool_config(config: str, launcher: str = 'none', cfg_options: Optional[dict] = None,
                     work_dir: Optional[str] = None) -> Tuple[Config, str]:
    """What tools/train.py and tools/test.py both do first: read the config, apply
    ``--launcher``/``--cfg-options``/``--work-dir`` (default ``./work_dirs/<config name>``).

    Returns the config and its scope ('mmdet' or 'mmseg').
    """
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    scope = config_scope(cfg)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg, scope


def config_scope(cfg: Config) -> str:
    """The library a config belongs to, from its ``default_scope``."""
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'config default_scope must be one of {SCOPES}, got {scope!r}')
    return scope


def models_registry(scope: str):
    """MMDetection's or MMSegmentation's ``MODELS``, with that library's modules registered and
    made the default scope (what building a model from one of its configs needs)."""
    import warnings

    import restv2_mm  # noqa: F401  (registers ResTv2)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    elif scope == 'mmseg':
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    else:
        raise ValueError(f'scope must be one of {SCOPES}, got {scope!r}')
    with warnings.catch_warnings():  # "the current default scope is not ...": intended here
        warnings.simplefilter('ignore', UserWarning)
        register_all_modules(init_default_scope=True)
    return MODELS


def iter_config_dicts(node) -> Iterator[dict]:
    """Every dict inside a nested config (dicts, lists and tuples), ``node`` itself first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from iter_config_dicts(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from iter_config_dicts(value)


def check_pretrained_weights(cfg: Config) -> None:
    """Raise before anything is built if a ResTv2 backbone's checkpoint file is missing or names
    another network's weights (e.g. ``model.pretrained`` inherited from a ResNet base config)."""
    model = cfg.get('model', {})
    for backbone in (d for d in iter_config_dicts(model) if d.get('type') == 'ResTv2'):
        sources = []
        init_cfg = backbone.get('init_cfg') or {}
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
            sources.append((init_cfg.get('checkpoint'), INIT_CFG_FIELD))
        # MMSegmentation's EncoderDecoder passes model.pretrained on to model.backbone.
        if backbone is model.get('backbone') and model.get('pretrained') is not None:
            sources.append((model.get('pretrained'), 'model.pretrained'))
        if backbone.get('pretrained') is not None:
            sources.append((backbone.get('pretrained'), 'model.backbone.pretrained'))
        for path, field in sources:
            reason = foreign_weights_reason(path)
            if reason:
                raise ValueError(foreign_weights_message(path, reason, field))
            if pretrained_file_missing(path):
                raise FileNotFoundError(missing_weights_message(path, field))
