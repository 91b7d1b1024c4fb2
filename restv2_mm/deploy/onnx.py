"""ONNX export of ResTv2 backbones, backbone + neck and whole segmentors, and the ORT check.

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``), on purpose.
With it every shape read in ``forward`` (``x.shape``, ``torch._shape_as_tensor``) is recorded as
a Shape node, so the arithmetic on it (window side, padding, crops, resize targets) stays
dynamic, and it exports opsets 11..20. The dynamo exporter (torch.export + onnxscript) instead
specialises on Python decisions about symbolic sizes: on torch 2.13 it exports the windowed
backbone without complaint but the graph is only right at the export size (a 333x517 input
fails in a Reshape, and a 64x64 one silently returns wrong maps), and it only writes
opset >= 18. EMSAv2 takes its size-agnostic path while a graph is recorded
(:meth:`restv2_mm.models.attention.EMSAv2.forward_any_size`).

Layouts: images (B, 3, H, W) float32, normalised as the model's data preprocessor does;
backbone/neck outputs (B, C_i, H_i, W_i); segmentor logits (B, num_classes, H, W).
"""
import copy
import logging
import os
import os.path as osp
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# The TorchScript exporter writes opsets up to 20; dynamic Pad/Range (window padding) need 11.
MIN_OPSET = 11
MAX_OPSET = 20
DEFAULT_OPSET = 17  # LayerNormalization is a single node from 17 on


def check_opset(opset: int) -> int:
    """``opset`` if this exporter and the windowed attention support it, else a ValueError."""
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f'opset must be an int in [{MIN_OPSET}, {MAX_OPSET}] (the TorchScript '
                         f'ONNX exporter writes up to {MAX_OPSET}; dynamic window padding needs '
                         f'>= {MIN_OPSET}), got {opset!r}')
    return opset


class DynamicAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` that exports with a dynamic input size.

    The exporter only writes adaptive pooling whose input size is known (or output 1); this one
    is the same average as two matrix products, with the bins (start = floor(i n / s),
    end = ceil((i + 1) n / s), PyTorch's) computed from the input's shape in the graph.
    (B, C, H, W) -> (B, C, s_h, s_w).
    """

    def __init__(self, output_size):
        super().__init__()
        size = output_size if isinstance(output_size, (tuple, list)) else (output_size, ) * 2
        if any(s is None for s in size):
            raise ValueError(f'output_size with None cannot be exported, got {output_size}')
        self.output_size = tuple(int(s) for s in size)

    @staticmethod
    def _bins(n: torch.Tensor, s: int, dtype: torch.dtype) -> torch.Tensor:
        """(s, n) averaging matrix of PyTorch's adaptive pooling bins over a length-n axis."""
        i = torch.arange(s, device=n.device).unsqueeze(1)
        start = torch.div(i * n, s, rounding_mode='floor')
        end = torch.div((i + 1) * n + s - 1, s, rounding_mode='floor')
        j = torch.arange(n, device=n.device).unsqueeze(0)
        inside = ((j >= start) & (j < end)).to(dtype)
        return inside / (end - start).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = torch._shape_as_tensor(x)
        rows = self._bins(shape[2], self.output_size[0], x.dtype)  # (s_h, H)
        cols = self._bins(shape[3], self.output_size[1], x.dtype)  # (s_w, W)
        return rows @ x @ cols.transpose(0, 1)


def make_pooling_exportable(model: nn.Module) -> nn.Module:
    """Swap every ``nn.AdaptiveAvgPool2d`` in ``model`` (in place) for the dynamic-size one."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(parent, name, DynamicAdaptiveAvgPool2d(child.output_size))
    return model


class BackboneWithNeck(nn.Module):
    """backbone then neck: (B, 3, H, W) -> the neck's maps (FPN: P2..P6 for Mask R-CNN)."""

    def __init__(self, backbone: nn.Module, neck: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward(self, x: torch.Tensor) -> tuple:
        return tuple(self.neck(self.backbone(x)))


class SegmentorLogits(nn.Module):
    """An mmseg EncoderDecoder's whole-image inference without metas: normalised images
    (B, 3, H, W) -> decode-head logits resized to the input, (B, num_classes, H, W).

    The same numbers as ``segmentor.encode_decode(x, [dict(img_shape=(H, W))] * B)``.
    """

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.segmentor.decode_head
        logits = head(self.segmentor.extract_feat(x))
        return F.interpolate(logits, size=x.shape[2:], mode='bilinear',
                             align_corners=head.align_corners)


def _as_tuple(outputs) -> tuple:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs, )


def export_onnx(module: nn.Module, path: str, shape: Tuple[int, int] = (224, 224),
                opset: int = DEFAULT_OPSET, dynamic: bool = True, batch: int = 1,
                in_channels: int = 3) -> str:
    """Export ``module`` ((B, in_channels, H, W) -> a tensor or a tuple of (B, C, h, w) maps).

    Input ``input``, outputs ``out0``.. (one per returned map); with ``dynamic`` the batch,
    height and width of the input and of every output are dynamic axes. The module is exported
    in eval mode with SyncBN turned into BN and adaptive average pooling made size-agnostic (on
    a copy; ``module`` itself is left as it is). Returns ``path``.
    """
    from mmengine.model import revert_sync_batchnorm

    check_opset(opset)
    if len(shape) != 2 or not all(int(s) > 0 for s in shape):
        raise ValueError(f'shape must be (H, W) with positive sizes, got {shape}')
    model = make_pooling_exportable(revert_sync_batchnorm(copy.deepcopy(module)))
    model.eval()  # not chained: mmdet's SwinTransformer.train returns None
    x = torch.randn(batch, in_channels, int(shape[0]), int(shape[1]))
    with torch.no_grad():
        num_outputs = len(_as_tuple(model(x)))
    output_names = [f'out{i}' for i in range(num_outputs)]
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
        for i, name in enumerate(output_names):
            dynamic_axes[name] = {0: 'batch', 2: f'height{i}', 3: f'width{i}'}
    run_exporter(model, (x, ), path, opset, ['input'], output_names, dynamic_axes)
    return path


def run_exporter(model: nn.Module, args: tuple, path: str, opset: int, input_names: List[str],
                 output_names: List[str], dynamic_axes: Optional[dict]) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (see the module docstring), the
    model in eval mode (and left in eval mode: the exporter would restore a wrapper's default
    train mode, and with it drop path), no gradients, constant folding."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The exporter's own notices: the TorchScript exporter is deprecated in favour of the
        # dynamo one (see the module docstring for why it is used), and tracer warnings about
        # Python values in the graph (mmdet/mmseg heads have many; whether one bakes in the
        # export size is what the ONNX Runtime check at another size decides, not the warning).
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        torch.onnx.export(model, args, path, dynamo=False, opset_version=opset,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=dynamic_axes, do_constant_folding=True)


def export_backbone_onnx(backbone: nn.Module, path: str, shape: Tuple[int, int] = (224, 224),
                         opset: int = DEFAULT_OPSET, dynamic: bool = True, batch: int = 1) -> str:
    """Export a backbone (ResTv2, or any (B, 3, H, W) -> maps module such as mmdet's Swin) to
    ``path``: input ``input`` (B, 3, H, W), outputs ``out0``..``outN`` (B, C_i, H_i, W_i), batch
    and spatial axes dynamic when ``dynamic``, traced with a ``batch`` x 3 x ``shape`` input.
    Returns ``path``.

    ResTv2 graphs are right at every batch and size. mmdet's SwinTransformer exports too, but
    its graph is only right at the traced batch and size (its window code turns shapes into
    Python numbers): export it with ``dynamic=False`` at the size and batch it will run.
    """
    return export_onnx(backbone, path, shape=shape, opset=opset, dynamic=dynamic, batch=batch)


def ort_session(path: str, threads: int = 1):
    """An ONNX Runtime CPU ``InferenceSession`` on ``path`` with ``threads`` intra-op threads
    (and one inter-op thread), all graph optimisations on."""
    import onnxruntime as ort

    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f'threads must be a positive int, got {threads!r}')
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, sess_options=options, providers=['CPUExecutionProvider'])


def run_session(session, x: torch.Tensor) -> List[np.ndarray]:
    """Every output of ``session`` for the (B, 3, H, W) input ``x``."""
    return session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})


def compare_with_torch(module: nn.Module, session, x: torch.Tensor) -> Dict[str, float]:
    """Run ``module`` (eval, no grad) and ``session`` on ``x``; max abs difference per output
    (``out0``..), plus ``max`` over all, and ``scale``: the largest |PyTorch output|."""
    module.eval()
    with torch.no_grad():
        expected = _as_tuple(module(x))
    got = run_session(session, x)
    if len(got) != len(expected):
        raise RuntimeError(f'ONNX model has {len(got)} outputs, PyTorch {len(expected)}')
    diffs = {}
    scale = 0.
    for i, (a, b) in enumerate(zip(got, expected)):
        b = b.numpy()
        if a.shape != b.shape:
            raise RuntimeError(f'out{i}: ONNX Runtime shape {a.shape} != PyTorch {b.shape}')
        diffs[f'out{i}'] = float(np.abs(a - b).max())
        scale = max(scale, float(np.abs(b).max()))
    diffs['max'] = max(v for k, v in diffs.items())
    diffs['scale'] = scale
    return diffs


def exportable_module(model: nn.Module, scope: str, backbone_only: bool = False,
                      with_neck: bool = False) -> nn.Module:
    """What :func:`export_onnx` exports from a built mmdet/mmseg model (see the export tool's
    help); a whole detector has two inputs and goes through
    :func:`restv2_mm.deploy.detector.export_detector` instead."""
    check_export_request(scope, backbone_only, with_neck)
    if backbone_only:
        if with_neck:
            neck = getattr(model, 'neck', None)
            if neck is None:
                raise ValueError(f'--with-neck: {type(model).__name__} has no neck')
            return BackboneWithNeck(model.backbone, neck)
        return model.backbone
    if scope == 'mmdet':
        raise ValueError('a whole detector is exported by restv2_mm.deploy.export_detector '
                         '(inputs: images and their sizes)')
    if not hasattr(model, 'decode_head') or not hasattr(model, 'extract_feat'):
        raise ValueError(f'whole-model export supports mmseg EncoderDecoder segmentors, got '
                         f'{type(model).__name__}; use --backbone-only')
    return SegmentorLogits(model)


def default_check_shape(shape: Tuple[int, int]) -> Tuple[int, int]:
    """A second (H, W), other than ``shape``, odd-sized and no multiple of 32 or of any window."""
    h, w = int(shape[0]), int(shape[1])
    return h - h // 4 + 5, w + w // 4 + 3


def load_restv2_config(config: str, cfg_options: Optional[dict] = None):
    """Read ``config`` (+ ``cfg_options``) and check it has a ResTv2 backbone: (cfg, scope)."""
    from mmengine.config import Config

    from restv2_mm.utils.config import config_scope

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = config_scope(cfg)
    backbone = cfg.get('model', {}).get('backbone')
    kind = backbone.get('type') if isinstance(backbone, dict) else None
    if kind != 'ResTv2':
        raise ValueError(f"{config}: model.backbone.type is {kind!r}, not 'ResTv2'. This tool "
                         'exports ResTv2 models; restv2_mm.deploy.export_onnx exports any module.')
    return cfg, scope


def build_restv2_model(config: str, checkpoint: Optional[str] = None,
                       cfg_options: Optional[dict] = None) -> Tuple[nn.Module, str]:
    """Build the mmdet/mmseg model of a ResTv2 ``config`` (eval mode) and load ``checkpoint``.

    The checkpoint is read as training reads it (mmengine's ``load_checkpoint``, which
    ``import restv2_mm`` routes through ``torch.load(weights_only=True)`` with mmengine's types
    allowed) and must fit the whole model (strict). Without one the weights are random (the
    config's ImageNet ``init_cfg`` is not read either). Returns the model and its scope.
    """
    from mmengine.logging import MMLogger
    from mmengine.runner import load_checkpoint

    import restv2_mm  # noqa: F401  (registers ResTv2 and the weights-only checkpoint loading)

    cfg, scope = load_restv2_config(config, cfg_options)
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    cfg.model.backbone.init_cfg = None  # weights come from ``checkpoint`` (or are random)
    model = MODELS.build(cfg.model)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights lists every parameter at INFO
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    model.eval()
    return model, scope


def check_export_request(scope: str, backbone_only: bool, with_neck: bool,
                         opset: Optional[int] = None) -> None:
    """Raise a ValueError for what cannot be exported (before anything is built)."""
    if with_neck and not backbone_only:
        raise ValueError('--with-neck goes with --backbone-only (it adds the neck to the backbone)')
    if scope == 'mmdet' and not backbone_only and opset is not None:
        from .detector import check_detector_opset
        check_detector_opset(opset)


def export_config(config: str, out: str, checkpoint: Optional[str] = None,
                  shape: Tuple[int, int] = (512, 512), opset: int = DEFAULT_OPSET,
                  backbone_only: bool = False, with_neck: bool = False,
                  check_shape: Optional[Tuple[int, int]] = None, check_batch: int = 2,
                  threads: int = 1, atol: float = 1e-4, rtol: float = 1e-4,
                  cfg_options: Optional[dict] = None, tolerance=None,
                  log=print) -> Dict[str, float]:
    """Build ``config``'s model, export it to ``out``, then run ONNX Runtime and PyTorch on a
    ``check_batch`` x ``check_shape`` input the export never saw.

    Backbone, backbone + neck and segmentors (:func:`exportable_module`): raises
    ``RuntimeError`` if the max abs difference exceeds ``atol + rtol * scale`` (scale: the
    largest |PyTorch output|) and returns :func:`compare_with_torch`'s dict plus
    ``tolerance``. Whole detectors (an mmdet config without ``backbone_only``): see
    :func:`restv2_mm.deploy.detector_check.export_and_verify_detector` (``tolerance``: its
    :class:`~restv2_mm.deploy.detector_check.Tolerance`).
    """
    check_opset(opset)
    _, scope = load_restv2_config(config, cfg_options)
    check_export_request(scope, backbone_only, with_neck, opset)
    model, scope = build_restv2_model(config, checkpoint, cfg_options)
    if checkpoint is not None:
        log(f'Loaded {checkpoint}')
    check_shape = tuple(check_shape) if check_shape else default_check_shape(shape)
    if check_shape == tuple(shape):
        raise ValueError(f'check shape {check_shape} must differ from the export shape')
    if scope == 'mmdet' and not backbone_only:
        from .detector_check import DEFAULT_TOLERANCE, export_and_verify_detector
        return export_and_verify_detector(
            model, out, shape=shape, opset=opset, check_shapes=[check_shape],
            check_batch=check_batch, threads=threads, tol=tolerance or DEFAULT_TOLERANCE,
            random_weights=checkpoint is None, name=osp.basename(config), log=log)
    if checkpoint is None:
        log('No --checkpoint: exporting RANDOM weights (the graph and the ORT check are still '
            'real; pass a trained checkpoint to deploy).')
    module = exportable_module(model, scope, backbone_only, with_neck)
    what = ('backbone + neck' if with_neck else 'backbone') if backbone_only else 'segmentor'
    export_onnx(module, out, shape=shape, opset=opset, dynamic=True)
    log(f'Exported the {what} of {osp.basename(config)} to {out} (opset {opset}, traced at '
        f'{shape[0]}x{shape[1]}; batch, height and width dynamic)')
    return verify_onnx(module, out, check_shape, batch=check_batch, threads=threads, atol=atol,
                       rtol=rtol, log=log)


def verify_onnx(module: nn.Module, path: str, shape: Tuple[int, int], batch: int = 2,
                threads: int = 1, atol: float = 1e-4, rtol: float = 1e-4,
                log=print) -> Dict[str, float]:
    """Run ONNX Runtime on ``path`` and ``module`` in PyTorch on one random ``batch`` x 3 x
    ``shape`` input; raise ``RuntimeError`` if the max abs difference exceeds
    ``atol + rtol * scale`` (scale: the largest |PyTorch output|). Returns
    :func:`compare_with_torch`'s dict plus ``tolerance``."""
    x = torch.randn(batch, 3, *shape, generator=torch.Generator().manual_seed(0))
    try:
        diffs = compare_with_torch(module, ort_session(path, threads), x)
    except Exception as e:  # ORT shape errors: the graph baked in the export size
        raise RuntimeError(f'ONNX Runtime failed on a {batch}x3x{shape[0]}x{shape[1]} input: '
                           f'{e}') from e
    diffs['tolerance'] = atol + rtol * diffs['scale']
    log(f'ONNX Runtime vs PyTorch at {batch}x3x{shape[0]}x{shape[1]}: max abs diff '
        f'{diffs["max"]:.3g} (outputs up to {diffs["scale"]:.3g}; tolerance '
        f'{diffs["tolerance"]:.3g})')
    if not diffs['max'] <= diffs['tolerance']:
        raise RuntimeError(
            f'ONNX Runtime output differs from PyTorch by {diffs["max"]:.3g} (> tolerance '
            f'{diffs["tolerance"]:.3g}) at {batch}x3x{shape[0]}x{shape[1]}: the exported graph is '
            'wrong at this input size. Per output: ' + ', '.join(
                f'{k}={v:.3g}' for k, v in diffs.items() if k.startswith('out')))
    return diffs
