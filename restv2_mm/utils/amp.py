"""Mixed-precision (autocast) inference for MMDetection detectors and MMSegmentation segmentors.

``torch.autocast`` runs convolutions, matmuls, linear layers and attention in a low-precision
dtype: bfloat16 on CPU (oneDNN uses AVX-512-BF16 / AMX where the CPU has them), float16 on CUDA.
What autocast alone gets wrong in an mm model, and what this module adds:

* mmcv's compiled ops (NMS, RoIAlign, RoIPool) accept float32 only on CPU ("expected scalar type
  Float but found BFloat16"). :func:`patch_mmcv_ops_for_autocast` makes each of them cast its
  floating inputs to float32 and run with autocast off, whenever autocast is on (outside autocast
  nothing changes). Box coordinates and NMS overlaps are thus computed in float32; RoIAlign's
  float32 output is cast back down by the next linear layer as usual.
* Heads return bfloat16 scores, boxes and logits, which numpy-based evaluators and visualizers
  cannot read. :func:`outputs_to_float32` casts every floating tensor of the returned data samples
  to float32 (label maps, labels and boolean masks keep their dtype).
* Heads' post-processing (``predict_by_feat``: anchors and box decoding, NMS, mask pasting, the
  seg head's resize to the image and its argmax) would run on bfloat16 head outputs; anchors are
  even generated in the scores' dtype, and bfloat16 has 8 bits of mantissa (box corners off by up
  to 4 px at x = 1000). :func:`prepare_amp_model` runs it in float32 on float32 copies: autocast
  covers the network (backbone, neck, head layers), not the geometry.

:func:`enable_amp_inference` applies all of this to a built model: its ``test_step`` (what
mmengine's test loop and the mm inferencers call) runs under mmengine's ``autocast`` and returns
float32 outputs. mmengine's own ``TestLoop(fp16=True)`` does the autocast part only; its bfloat16
predictions crash the COCO evaluator (numpy has no bfloat16), hence a wrapper instead.
"""
import functools
import importlib
from contextlib import contextmanager
from typing import Any, Optional

import torch

# (module, autograd.Function) of mmcv ops whose kernels need float32 inputs.
FLOAT32_OPS = (
    ('mmcv.ops.nms', 'NMSop'),
    ('mmcv.ops.nms', 'SoftNMSop'),
    ('mmcv.ops.roi_align', 'RoIAlignFunction'),
    ('mmcv.ops.roi_pool', 'RoIPoolFunction'),
)
AMP_DTYPES = {'cpu': torch.bfloat16, 'cuda': torch.float16}


def amp_dtype(device_type: str) -> torch.dtype:
    """The autocast dtype used on ``device_type``: bfloat16 on CPU, float16 on CUDA."""
    device_type = torch.device(device_type).type
    if device_type not in AMP_DTYPES:
        raise ValueError(f'mixed precision is supported on {tuple(AMP_DTYPES)}, '
                         f'got device {device_type!r}')
    return AMP_DTYPES[device_type]


def _low_precision_floats(values) -> bool:
    return any(isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != torch.float32
               for v in values)


def _to_float32(values):
    return [v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for v in values]


def _float32_forward(forward):
    """Wrap an autograd Function's ``forward`` to compute in float32 when autocast is on.

    Floating outputs come back in the dtype of the first input (RoIAlign: the features' dtype,
    which mmdet's RoI extractors write into a buffer of that dtype); index outputs are unchanged.
    """

    @functools.wraps(forward)
    def wrapped(ctx, *args, **kwargs):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if first is None or not torch.is_autocast_enabled(first.device.type):
            return forward(ctx, *args, **kwargs)
        with torch.autocast(first.device.type, enabled=False):
            out = forward(ctx, *_to_float32(args), **kwargs)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return out.to(first.dtype)
        return out

    wrapped.__restv2_float32__ = True
    return wrapped


def _float32_backward(backward):
    """The matching ``backward``: incoming gradients in float32 (autograd casts the results
    back to each input's dtype)."""

    @functools.wraps(backward)
    def wrapped(ctx, *grads):
        if not _low_precision_floats(grads):
            return backward(ctx, *grads)
        return backward(ctx, *_to_float32(grads))

    wrapped.__restv2_float32__ = True
    return wrapped


def patch_mmcv_ops_for_autocast() -> None:
    """Make mmcv's float32-only ops safe under autocast (idempotent; see the module docstring)."""
    for module_name, cls_name in FLOAT32_OPS:
        try:
            fn_cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError):  # an mmcv build without this op
            continue
        if not getattr(fn_cls.forward, '__restv2_float32__', False):
            fn_cls.forward = staticmethod(_float32_forward(fn_cls.forward))
            fn_cls.backward = staticmethod(_float32_backward(fn_cls.backward))


@contextmanager
def amp_autocast(device_type: str = 'cpu', enabled: bool = True):
    """mmengine's ``autocast`` in :func:`amp_dtype` with the mmcv ops patched; no-op if disabled."""
    if not enabled:
        yield
        return
    from mmengine.runner.amp import autocast
    patch_mmcv_ops_for_autocast()
    device_type = torch.device(device_type).type
    with autocast(device_type=device_type, dtype=amp_dtype(device_type)):
        yield


def outputs_to_float32(obj: Any) -> Any:
    """``obj`` with every floating tensor cast to float32, in place for mm data elements.

    Walks lists, tuples, dicts and mmengine ``BaseDataElement`` trees (DetDataSample,
    SegDataSample, InstanceData, PixelData); integer and boolean tensors are left as they are.
    """
    from mmengine.structures import BaseDataElement
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() and obj.dtype != torch.float32 else obj
    if isinstance(obj, BaseDataElement):
        for key, value in list(obj.items()):
            new = outputs_to_float32(value)
            if new is not value:
                setattr(obj, key, new)
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(outputs_to_float32(v) for v in obj)
    if isinstance(obj, dict):
        return {k: outputs_to_float32(v) for k, v in obj.items()}
    return obj


def _float32_predict_by_feat(predict_by_feat):
    """Run a head's post-processing in float32 when autocast is on (see the module docstring)."""

    @functools.wraps(predict_by_feat)
    def wrapped(*args, **kwargs):
        device_type = next(
            (t.device.type for t in _tensors(list(args) + list(kwargs.values()))), 'cpu')
        if not torch.is_autocast_enabled(device_type):
            return predict_by_feat(*args, **kwargs)
        args = [_head_output_to_float32(a) for a in args]
        kwargs = {k: _head_output_to_float32(v) for k, v in kwargs.items()}
        with torch.autocast(device_type, enabled=False):
            return predict_by_feat(*args, **kwargs)

    wrapped.__restv2_float32__ = True
    return wrapped


def _head_output_to_float32(value):
    """Tensors, lists of tensors and data elements in float32; anything else (configs, image
    metas) passed through untouched."""
    from mmengine.structures import BaseDataElement
    if isinstance(value, (torch.Tensor, BaseDataElement)):
        return outputs_to_float32(value)
    if isinstance(value, (list, tuple)) and any(
            isinstance(v, (torch.Tensor, BaseDataElement, list, tuple)) for v in value):
        return type(value)(_head_output_to_float32(v) for v in value)
    return value


def _tensors(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _tensors(v)


def prepare_amp_model(model: torch.nn.Module) -> torch.nn.Module:
    """Make ``model`` (mmdet / mmseg) safe and exact where it matters under autocast.

    Patches the mmcv ops (:func:`patch_mmcv_ops_for_autocast`) and wraps every head's
    ``predict_by_feat`` (box decoding from anchors / RoIs, NMS, mask pasting, the seg head's
    resize to the image) to run in float32 on float32 copies of the head outputs: anchors are
    generated in the dtype of the scores, and bfloat16 coordinates (8 bits of mantissa) would be
    off by up to 4 pixels at x = 1000. Idempotent; outside autocast nothing changes.
    """
    patch_mmcv_ops_for_autocast()
    for module in model.modules():
        method = getattr(module, 'predict_by_feat', None)
        if callable(method) and not getattr(method, '__restv2_float32__', False):
            module.predict_by_feat = _float32_predict_by_feat(method)
    return model


def model_device_type(model: torch.nn.Module) -> str:
    param = next(model.parameters(), None)
    return 'cpu' if param is None else param.device.type


def enable_amp_inference(model: torch.nn.Module, device_type: Optional[str] = None) -> torch.dtype:
    """Run ``model.test_step`` under autocast from now on, with float32 outputs.

    ``model`` is a built mmdet / mmseg model (or a wrapper: a TTA model, DDP) whose ``test_step``
    mmengine's test loop and the mm inferencers call. Returns the autocast dtype.
    """
    device_type = device_type or model_device_type(model)
    dtype = amp_dtype(device_type)
    test_step = model.test_step
    if getattr(test_step, '__restv2_amp__', False):
        return dtype
    prepare_amp_model(model)

    @functools.wraps(test_step)
    def amp_test_step(*args, **kwargs):
        with amp_autocast(device_type):
            outputs = test_step(*args, **kwargs)
        return outputs_to_float32(outputs)

    amp_test_step.__restv2_amp__ = True
    model.test_step = amp_test_step
    return dtype


def describe_amp(device_type: str) -> str:
    """One line for the tools' logs: what ``--amp`` runs."""
    dtype = amp_dtype(device_type)
    return (f'--amp: inference under torch.autocast({torch.device(device_type).type!r}, '
            f'dtype={dtype}); NMS / RoIAlign / RoIPool in float32, outputs cast to float32')
