"""Convert any official ResTv2 file for this project's configs (``tools/convert_official.py``).

What the file is, is read from its keys:

- an ImageNet classifier (or any backbone weights: a bare, ``module.``-prefixed or converted
  state dict, or the backbone of one of our trained models) -> backbone weights in our layout,
  for ``model.backbone.init_cfg`` (the classifier's ``norm.*``/``head.*`` are dropped);
- the authors' Detectron2 Mask R-CNN (``.pth`` or ``.pkl``) -> a whole Mask R-CNN for
  ``configs/mask_rcnn_restv2_{t,s,b}*.py``;
- the authors' MMSegmentation 0.x UperNet -> a whole UperNet for ``configs/upernet_restv2_*.py``.

Before anything is written the result is checked: it loads with ``strict=True`` into the model
the target config builds (no missing, unexpected or mis-shaped tensor), a released file holds
exactly the tensors its layout must have, and the arch (T/S/B, from the block counts) and task
are the config's. The output is an mmengine checkpoint, ``{'state_dict': ..., 'meta': ...}``,
whose ``meta['dataset_meta']`` names COCO's or ADE20K's classes and palette.
"""
import copy
import functools
import io
import os.path as osp
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ..engine.atomic_io import atomic_write_bytes
from .loading import read_checkpoint
from .official import backbone_state_dict, is_official_layout, unwrap_state_dict
from .released import (BACKBONE, DETECTION, RELEASED_TENSORS, SEGMENTATION, ArchMismatchError,
                       ConversionError, ModelMismatchError, TaskMismatchError, TensorCountError,
                       check_not_restv1, convert_released, find_released_layout, identify_arch,
                       strip_prefix)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
ARCH_LETTERS = {'tiny': 't', 'small': 's', 'base': 'b', 'large': 'l'}
# Where a converted released model goes: the configs that test it as the release did, and the
# default configs of the same network (training recipe, our test pipeline).
RELEASE_TEST_CONFIGS = {DETECTION: 'configs/mask_rcnn_restv2_{}_release_test.py',
                        SEGMENTATION: 'configs/upernet_restv2_{}_release_test.py'}
DEFAULT_CONFIGS = {DETECTION: 'configs/mask_rcnn_restv2_{}.py',
                   SEGMENTATION: 'configs/upernet_restv2_{}.py'}
TASK_SCOPES = {DETECTION: 'mmdet', SEGMENTATION: 'mmseg'}
SCOPE_TASKS = {'mmdet': 'an MMDetection (detection)', 'mmseg': 'an MMSegmentation (segmentation)'}


@dataclass
class ConversionReport:
    """What was found, what was written and what it was checked against."""
    found: str
    task: str
    arch: str
    tensors: int
    params: int
    config: Optional[str] = None
    default_config: Optional[str] = None
    dataset: Optional[str] = None
    left_out: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


def to_tensors(state_dict: Mapping, path: str) -> 'OrderedDict[str, torch.Tensor]':
    """Numpy arrays (D2 ``.pkl`` files) become tensors; floating tensors become fp32."""
    out = OrderedDict()
    for key, value in state_dict.items():
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in 'fiub':
                raise ConversionError(f'{path}: {key} is a numpy array of {value.dtype}, '
                                      'not of numbers')
            value = torch.from_numpy(np.array(value, order='C'))  # a copy; keeps 0-d arrays 0-d
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f'{path}: {key} holds a {type(value).__name__}, not a tensor')
        out[key] = value.float() if value.is_floating_point() else value
    return out


def state_dict_params(state_dict: Mapping) -> int:
    """Parameters of a state dict (BatchNorm running statistics and counters excluded)."""
    return sum(v.numel() for k, v in state_dict.items()
               if 'running_' not in k and 'num_batches_tracked' not in k)


def resolve_config(config: str) -> Tuple[str, str]:
    """(absolute path, name to show) of a config given as a path, or relative to the repository
    (``configs/...`` works from any working directory)."""
    found_here = osp.exists(config) or osp.isabs(config)
    path = osp.abspath(config if found_here else osp.join(ROOT, config))
    if not osp.isfile(path):
        raise FileNotFoundError(f'config {config} does not exist')
    relative = osp.relpath(path, ROOT)
    return path, (config if relative.startswith('..') else relative)


def _config_backbone(cfg, config: str) -> dict:
    from ..utils.config import iter_config_dicts
    backbones = [d for d in iter_config_dicts(cfg.get('model', {})) if d.get('type') == 'ResTv2']
    if len(backbones) != 1:
        raise ConversionError(f'{config} builds {len(backbones)} ResTv2 backbones; expected one')
    return backbones[0]


def _arch_name(arch) -> str:
    """``ResTv2``'s ``arch`` argument (a name or a dict of settings) as a zoo name if possible."""
    from ..models.restv2 import ResTv2
    if isinstance(arch, str):
        return arch
    for name, setting in ResTv2.arch_zoo.items():
        if all(tuple(arch.get(k, ())) == tuple(v) for k, v in setting.items()):
            return name
    return str(dict(arch))


def check_config(config: str, task: str, arch: str, found: str):
    """The config (shown as ``config``) as an mmengine Config, after checking its task and arch
    against the file's."""
    from ..utils.config import config_scope
    cfg = read_config(resolve_config(config)[0])
    scope = config_scope(cfg)
    if task != BACKBONE and scope != TASK_SCOPES[task]:
        raise TaskMismatchError(
            f'{found} is a {task} model, but --config {config} is {SCOPE_TASKS[scope]} config. '
            f'Use {RELEASE_TEST_CONFIGS[task].format(ARCH_LETTERS[arch])} or another {task} '
            f'config of ResTv2-{ARCH_LETTERS[arch].upper()}.')
    config_arch = _arch_name(_config_backbone(cfg, config).get('arch', 'tiny'))
    if config_arch != arch:
        hint = (f' Use {RELEASE_TEST_CONFIGS[task].format(ARCH_LETTERS[arch])}.'
                if task != BACKBONE and arch in RELEASED_TENSORS[task] else '')
        raise ArchMismatchError(
            f'{found} is ResTv2-{ARCH_LETTERS[arch].upper()} ({arch}), but --config {config} '
            f'builds ResTv2 arch {config_arch!r}.{hint}')
    return cfg


def state_dict_problems(model: torch.nn.Module, state_dict: Mapping) -> List[str]:
    """Why ``model.load_state_dict(state_dict, strict=True)`` would fail (empty if it would not)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f'{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}'
                  for k in state_dict if k in own and state_dict[k].shape != own[k].shape]
    problems = []
    for label, keys in (('missing', missing), ('unexpected', unexpected),
                        ('shape mismatch', mismatched)):
        if keys:
            more = f' (+{len(keys) - 6} more)' if len(keys) > 6 else ''
            problems.append(f'{len(keys)} {label}: {", ".join(keys[:6])}{more}')
    return problems


def _build_model(cfg) -> torch.nn.Module:
    from ..utils.config import config_scope, models_registry
    registry = models_registry(config_scope(cfg))
    _config_backbone(cfg, '').update(init_cfg=None)  # the weights come from the file
    return registry.build(cfg.model)


@functools.lru_cache(maxsize=16)
def _parsed_config(path: str, mtime: float):
    from mmengine.config import Config
    return Config.fromfile(path)


def read_config(path: str):
    """A copy of the config at ``path``. Configs are parsed once per process: for each
    ``mmdet::`` / ``mmseg::`` base mmengine reads every metafile of the library (seconds)."""
    return copy.deepcopy(_parsed_config(path, osp.getmtime(path)))


def dataset_meta(task: str) -> Dict[str, list]:
    """Classes and palette of the data the released models were trained on (COCO / ADE20K),
    in the order of the models' class outputs (Detectron2's COCO order is mmdet's)."""
    if task == DETECTION:
        from mmdet.datasets import CocoDataset as dataset
    else:
        from mmseg.datasets import ADE20KDataset as dataset
    return {'classes': list(dataset.METAINFO['classes']),
            'palette': [list(color) for color in dataset.METAINFO['palette']]}


def write_mm_checkpoint(state_dict: Mapping, meta: dict, dst: str) -> None:
    """``{'state_dict': ..., 'meta': ...}`` at ``dst``, written atomically (never half a file)."""
    buffer = io.BytesIO()
    torch.save({'state_dict': OrderedDict(state_dict), 'meta': meta}, buffer)
    atomic_write_bytes(buffer.getbuffer(), dst)


def _convert_backbone(state_dict, src, config) -> tuple:
    from ..models.restv2 import ResTv2
    backbone = backbone_state_dict(state_dict)
    arch = identify_arch(backbone)
    if is_official_layout(state_dict):
        kind = 'an ImageNet classifier in the official layout (its norm.* and head.* dropped)'
    elif any(k.startswith('backbone.') for k in state_dict):
        kind = 'a whole-model checkpoint in our layout (its backbone taken)'
    else:
        kind = 'backbone weights in our layout'
    found = f'{src}: {kind}, ResTv2-{ARCH_LETTERS[arch].upper()}'
    if config is not None:
        check_config(config, BACKBONE, arch, found)
    style = 'cwin' if any('.cross_window_conv.' in k for k in backbone) else 'global'
    # The backbone's own check: every tensor but the downstream-only output norms / CWin convs.
    ResTv2(arch, attn_style=style).load_pretrained_state_dict(backbone, source=src)
    report = ConversionReport(found=found, task=BACKBONE, arch=arch, tensors=len(backbone),
                              params=state_dict_params(backbone), config=config)
    return backbone, report


def _convert_released(state_dict, layout, src, config) -> tuple:
    converted, left_out = convert_released(state_dict, layout)
    arch = identify_arch(strip_prefix(converted, 'backbone.'))
    letter = ARCH_LETTERS[arch].upper()
    found = (f'{src}: {layout.description} with a ResTv2-{letter} backbone '
             f'({len(converted)} tensors)')
    if arch not in RELEASED_TENSORS[layout.task]:
        raise ArchMismatchError(f'{found}: no ResTv2-{letter} {layout.description} was released '
                                'and no config of this project builds one')
    default_config = None
    if config is None:  # the release-test config, and the default config of the same network
        config = RELEASE_TEST_CONFIGS[layout.task].format(ARCH_LETTERS[arch])
        default_config = DEFAULT_CONFIGS[layout.task].format(ARCH_LETTERS[arch])
    cfg = check_config(config, layout.task, arch, found)
    warnings = []
    style = _config_backbone(cfg, config).get('attn_style', 'global')
    release_test = RELEASE_TEST_CONFIGS[layout.task].format(ARCH_LETTERS[arch])
    if style != 'global':
        warnings.append(
            f'{config} uses {style!r} attention, but the released models were trained with '
            'Global attention: the same tensors load, yet the network computes something else '
            f'than the one the paper evaluated. Use {release_test} to evaluate it.')
    model = _build_model(cfg)
    if style == 'cwin':  # no cross-window convs in the release: they keep their zero init
        own = model.state_dict()
        added = [k for k in own if '.cross_window_conv.' in k and k not in converted]
        # ResidualDWConv starts at zero (restv2_mm.models.layers): x + conv(x) is the identity.
        converted.update((k, torch.zeros(own[k].shape, dtype=own[k].dtype)) for k in added)
        warnings.append(f'{len(added)} CWin cross-window conv tensors are not in the release: '
                        'written as the config initialises them (zero, so each is an identity)')
    problems = state_dict_problems(model, converted)
    expected = RELEASED_TENSORS[layout.task][arch]
    source_tensors = len(state_dict) - len(left_out)
    if source_tensors != expected:
        raise TensorCountError(
            f'{found}: the file holds {source_tensors} tensors, a released ResTv2-{letter} '
            f'{layout.description} holds {expected}. Against {config}: '
            + ('; '.join(problems) or 'no difference in names and shapes'))
    if problems:
        raise ModelMismatchError(f'{found}: the converted tensors do not fit the model of '
                                 f'{config} (strict load): ' + '; '.join(problems))
    model.load_state_dict(converted, strict=True)  # the real thing, after the readable check
    report = ConversionReport(
        found=found, task=layout.task, arch=arch, tensors=len(converted),
        params=state_dict_params(converted), config=config,
        default_config=default_config,
        dataset='COCO' if layout.task == DETECTION else 'ADE20K', left_out=left_out,
        warnings=warnings)
    return converted, report


def convert_checkpoint(src: str, dst: str, config: Optional[str] = None) -> ConversionReport:
    """Convert the official ResTv2 file ``src`` to an mmengine checkpoint at ``dst``.

    ``config`` (a path; relative paths are tried from the working directory, then from the
    repository) is the config the result is for; by default the release-test config of the
    detected task and arch. Raises a :class:`~restv2_mm.converters.released.ConversionError`
    subclass, or :class:`~restv2_mm.engine.checkpoint_files.CheckpointFileError`, naming the
    problem; nothing is written then.
    """
    if config is not None:
        config = resolve_config(config)[1]
    state_dict = to_tensors(unwrap_state_dict(read_checkpoint(src)), src)
    check_not_restv1(state_dict, src)
    layout = find_released_layout(state_dict)
    if layout is None:
        converted, report = _convert_backbone(state_dict, src, config)
    else:
        converted, report = _convert_released(state_dict, layout, src, config)
    meta = {'converted_from': osp.basename(src), 'converter': 'restv2_mm',
            'source_layout': layout.name if layout is not None else 'backbone',
            'arch': report.arch}
    if report.config is not None:
        meta['config'] = report.config
    if report.task != BACKBONE:
        meta['dataset_meta'] = dataset_meta(report.task)
    write_mm_checkpoint(converted, meta, dst)
    return report
