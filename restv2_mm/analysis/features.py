"""Build a config's ResTv2 backbone and collect what the figures need with forward hooks.

Nothing in the model is changed; the hook points are

* every ``ResTv2Block``: its output, the per-block (B, H, W, C) feature map of Figure 3;
* every ``EMSAv2`` (``block.attn``): the output of ``attn.up_norm`` is the up branch ("up"), the
  input of ``attn.proj`` is attention + up ("com"), and "attn" = com - up (Figure 4).

Windowed styles run the attention on (B * nW, wh, ww, C) windows; the branch outputs are put
back into whole (B, H, W, C) maps (padding cropped) before they are returned.
"""
import math
import os
from collections import OrderedDict
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config

from ..converters import backbone_state_dict, load_checkpoint_file
from ..models import ResTv2
from ..models.attention import EMSAv2
from ..models.restv2 import ResTv2Block

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def add_analysis_arguments(parser, seed_help: str = 'seed of the random initialisation'):
    """The command-line arguments every figure tool of tools/analysis/ shares."""
    from mmengine.config import DictAction
    parser.add_argument('config', help='config with a ResTv2 model.backbone')
    parser.add_argument('--checkpoint', help='backbone, converted, official or detector/segmentor '
                        'checkpoint; without it the weights are random')
    parser.add_argument('--images', help='directory of images (default: the built-in set)')
    parser.add_argument('--num-images', type=int, default=None,
                        help='images to use (default: all in --images, 16 built-in)')
    parser.add_argument('--img-size', type=int, default=224,
                        help='images are resized to this square')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--seed', type=int, default=0, help=seed_help)
    parser.add_argument('--out', required=True, help='output figure (.png)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys')
    return parser


def save_titled_figure(fig, heading: str, args, num_images: int, detail: str) -> str:
    """Give a figure tool's figure the title that names config, weights and images; save it to
    ``args.out`` and close it. Returns the title."""
    import matplotlib.pyplot as plt
    source = args.images if args.images else 'built-in image set'
    title = (f'{heading}: {os.path.basename(args.config)}, {describe_weights(args.checkpoint)}\n'
             f'{num_images} images from {source}, {args.img_size}x{args.img_size}; {detail}')
    fig.suptitle(title, fontsize=10.5)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    return title


def load_config(config: Union[str, Config], cfg_options: Optional[dict] = None) -> Config:
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def _registry_models(cfg: Config):
    import restv2_mm  # noqa: F401  (registers ResTv2 in mmdet and mmseg)
    scope = cfg.get('default_scope', 'mmdet')
    if scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmdet.registry import MODELS
    return MODELS


def build_backbone(config: Union[str, Config], checkpoint: Optional[str] = None,
                   cfg_options: Optional[dict] = None) -> Tuple[nn.Module, Config]:
    """The config's ``model.backbone``, in eval mode.

    With ``checkpoint``, its backbone weights are loaded (official ImageNet layouts, converted
    copies, whole detector/segmentor checkpoints); without, the backbone is randomly initialised
    (the config's ``init_cfg`` is ignored, so no ImageNet file is needed).
    """
    cfg = load_config(config, cfg_options)
    if 'model' not in cfg or 'backbone' not in cfg.model:
        raise KeyError('the config has no model.backbone')
    backbone_cfg = cfg.model.backbone.copy()
    backbone_cfg.pop('_delete_', None)
    backbone_cfg['init_cfg'] = None
    model = _registry_models(cfg).build(backbone_cfg)
    if not isinstance(model, ResTv2):
        raise TypeError(f'model.backbone must be a ResTv2, got {type(model).__name__}')
    model.init_weights()
    if checkpoint is not None:
        state_dict = backbone_state_dict(load_checkpoint_file(checkpoint))
        model.load_pretrained_state_dict(state_dict, source=checkpoint)
    return model.eval(), cfg


def normalisation(cfg: Config) -> Tuple[Tuple[float, ...], Tuple[float, ...], bool]:
    """(mean, std, rgb): the config's data_preprocessor mean/std and whether they are in RGB
    order (``bgr_to_rgb=True``, as in the ResTv2 configs) or in the BGR order of mmcv-loaded
    images. ImageNet's RGB statistics when the config has none."""
    pre = cfg.get('model', {}).get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    mean = tuple(pre.get('mean') or IMAGENET_MEAN)
    std = tuple(pre.get('std') or IMAGENET_STD)
    rgb = bool(pre.get('bgr_to_rgb', False)) or 'mean' not in pre
    return mean, std, rgb


def preprocess(images: Sequence[np.ndarray], cfg: Config) -> torch.Tensor:
    """RGB uint8 (H, W, 3) images of one size -> a normalised (B, 3, H, W) float batch."""
    mean, std, rgb = normalisation(cfg)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    if not rgb:
        x = x.flip(1)  # the config's statistics are in BGR order
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def block_names(model: nn.Module) -> List[str]:
    """Module names of the ResTv2Blocks, in forward order."""
    return [name for name, m in model.named_modules() if isinstance(m, ResTv2Block)]


def short_block_labels(model: nn.Module) -> List[str]:
    """'s1.b1', 's2.b1', ... (stage and block within the stage, 1-based) per ResTv2Block."""
    labels = []
    for name in block_names(model):
        parts = name.split('.')
        try:
            s, b = int(parts[parts.index('stages') + 1]), int(parts[parts.index('blocks') + 1])
            labels.append(f's{s + 1}.b{b + 1}')
        except (ValueError, IndexError):
            labels.append(name)
    return labels


@contextmanager
def _hooks(handles: list):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _batches(x: torch.Tensor, batch_size: int):
    for i in range(0, x.shape[0], batch_size):
        yield x[i:i + batch_size]


@torch.no_grad()
def collect_block_outputs(model: nn.Module, inputs: torch.Tensor,
                          batch_size: int = 8) -> 'OrderedDict[str, torch.Tensor]':
    """{block name: (N, C, H, W) output of that ResTv2Block} over all N inputs."""
    names = block_names(model)
    if not names:
        raise ValueError('the model has no ResTv2Block')
    store: Dict[str, List[torch.Tensor]] = {n: [] for n in names}
    modules = dict(model.named_modules())
    handles = []
    for name in names:
        def hook(_m, _inp, out, name=name):
            store[name].append(out.detach().permute(0, 3, 1, 2).float().cpu())
        handles.append(modules[name].register_forward_hook(hook))
    with _hooks(handles):
        for x in _batches(inputs, batch_size):
            model(x)
    return OrderedDict((n, torch.cat(v)) for n, v in store.items())


def _unwindow(t: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
    """(B * nW, wh, ww, C) windows in row order (or a whole (B, H, W, C) map) -> (B, H, W, C)."""
    if t.shape[0] == B and t.shape[1:3] == (H, W):
        return t
    N, wh, ww, C = t.shape
    nh, nw = math.ceil(H / wh), math.ceil(W / ww)
    if N != B * nh * nw:
        raise RuntimeError(f'cannot put {tuple(t.shape)} windows back into a {B}x{H}x{W} map')
    t = t.view(B, nh, nw, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, nh * wh, nw * ww, C)
    return t[:, :H, :W]


@torch.no_grad()
def collect_branch_outputs(
        model: nn.Module, inputs: torch.Tensor, batch_size: int = 8,
        pool_to: Optional[int] = None) -> 'OrderedDict[str, Dict[str, torch.Tensor]]':
    """{EMSAv2 name: {'up', 'attn', 'com': (N, C, H, W)}} over all N inputs.

    ``pool_to`` average-pools every map to at most ``pool_to`` x ``pool_to`` as it is collected
    (to bound memory on large inputs).
    """
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, EMSAv2)]
    if not modules:
        raise ValueError('the model has no EMSAv2')
    store: Dict[str, Dict[str, List[torch.Tensor]]] = {
        n: {'up': [], 'attn': [], 'com': []} for n, _ in modules}
    current: Dict[str, dict] = {}
    handles = []

    def keep(name, key, t):
        t = t.permute(0, 3, 1, 2).float()
        if pool_to is not None and max(t.shape[-2:]) > pool_to:
            t = F.adaptive_avg_pool2d(t, (min(pool_to, t.shape[-2]), min(pool_to, t.shape[-1])))
        store[name][key].append(t.cpu())

    for name, m in modules:
        def pre(_m, args, name=name):
            B, H, W, _ = args[0].shape
            current[name] = dict(shape=(B, H, W), up=[], com=[])

        def up_hook(_m, _inp, out, name=name):
            current[name]['up'].append(out.detach())

        def proj_pre(_m, args, name=name):
            current[name]['com'].append(args[0].detach())

        def post(_m, _args, _out, name=name):
            c = current.pop(name)
            if len(c['up']) != 1 or len(c['com']) != 1:
                raise RuntimeError(f'{name}: expected one up_norm and one proj call per forward, '
                                   f"got {len(c['up'])} and {len(c['com'])}")
            B, H, W = c['shape']
            up = _unwindow(c['up'][0], B, H, W)
            com = _unwindow(c['com'][0], B, H, W)
            keep(name, 'up', up)
            keep(name, 'com', com)
            keep(name, 'attn', com - up)

        handles += [m.register_forward_pre_hook(pre), m.up_norm.register_forward_hook(up_hook),
                    m.proj.register_forward_pre_hook(proj_pre), m.register_forward_hook(post)]
    with _hooks(handles):
        for x in _batches(inputs, batch_size):
            model(x)
    return OrderedDict((n, {k: torch.cat(v) for k, v in d.items()}) for n, d in store.items())


def describe_weights(checkpoint: Optional[str]) -> str:
    """Figure title fragment naming the weights."""
    if checkpoint is None:
        return 'randomly initialised weights (no checkpoint)'
    return f'checkpoint {os.path.basename(checkpoint)}'
