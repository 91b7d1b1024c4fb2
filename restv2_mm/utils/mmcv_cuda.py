"""NMS and RoIAlign on CUDA tensors when mmcv was built with CPU ops only.

mmcv's compiled ops (``mmcv._ext``) get CUDA kernels only when mmcv is built where torch sees a
GPU (or with ``FORCE_CUDA=1`` and nvcc), which takes long and needs a CUDA toolkit that mmcv
2.1.0 compiles with. A CPU-op build (what tools/setup_env.sh builds, in about 11 minutes on 2
cores, or 2 to 3 on 16) runs everything of ResTv2, Swin-T, FPN and UperNet on a GPU, as these are
torch code, but raises "nms_impl: implementation for device cuda:0 not found" in Mask R-CNN,
which needs two compiled ops: NMS (RPN proposals, final detections) and RoIAlign (box and mask
heads, forward and backward). torchvision, which comes with torch's CUDA wheels, has CUDA
kernels of both algorithms: mmcv's ``nms`` with ``offset=0`` is torchvision's, and both
RoIAlign kernels follow Detectron2 (``aligned`` half-pixel shift, ``sampling_ratio=0`` meaning
ceil(roi size / output size) samples per bin, average pooling).

:func:`route_cuda_ops_to_torchvision` puts a proxy in front of ``mmcv._ext`` in the two mmcv
modules: tensors on a routed device go to torchvision's kernels, all others (and every other
op) to mmcv's own. It changes nothing when mmcv has CUDA kernels or no GPU is present, and it
refuses what torchvision does not compute (an NMS box offset of 1, max-pooled RoIAlign) with an
error saying so. ``tests/test_cuda.py`` checks the CUDA results against mmcv's CPU kernels;
``tests/test_cpu_fast_paths.py`` checks the same routing on the CPU where torchvision is there.
"""
import importlib
from typing import Iterable

import torch

ROUTED_MODULES = ('mmcv.ops.nms', 'mmcv.ops.roi_align')
_AVG_POOL = 1  # mmcv's RoIAlignFunction passes pool_mode 0 (max) or 1 (avg)


def mmcv_has_cuda_ops() -> bool:
    """Whether the installed mmcv was compiled with CUDA kernels."""
    from mmcv.ops import get_compiling_cuda_version
    return get_compiling_cuda_version() != 'not available'


class TorchvisionKernels:
    """``mmcv._ext`` with ``nms`` and ``roi_align_forward`` / ``roi_align_backward`` served by
    torchvision for tensors on ``devices`` (device types, e.g. ``('cuda', )``); keyword
    arguments as mmcv's Python wrappers pass them."""

    def __init__(self, ext, devices: Iterable[str]):
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)
        self._ext = ext
        self.devices = tuple(devices)

    def __getattr__(self, name):
        return getattr(self._ext, name)

    def _routed(self, tensor: torch.Tensor) -> bool:
        return tensor.device.type in self.devices

    def nms(self, bboxes, scores, iou_threshold, offset):
        if not self._routed(bboxes):
            return self._ext.nms(bboxes, scores, iou_threshold=iou_threshold, offset=offset)
        if offset != 0:
            raise NotImplementedError(
                f'nms(offset={offset}) on {bboxes.device}: torchvision computes box areas without '
                'the +1 offset; build mmcv with CUDA ops (FORCE_CUDA=1) for this model')
        return torch.ops.torchvision.nms(bboxes, scores.to(bboxes.dtype), float(iou_threshold))

    def roi_align_forward(self, input, rois, output, argmax_y, argmax_x, *, aligned_height,
                          aligned_width, spatial_scale, sampling_ratio, pool_mode, aligned):
        if not self._routed(input):
            return self._ext.roi_align_forward(
                input, rois, output, argmax_y, argmax_x, aligned_height=aligned_height,
                aligned_width=aligned_width, spatial_scale=spatial_scale,
                sampling_ratio=sampling_ratio, pool_mode=pool_mode, aligned=aligned)
        self._check_avg(pool_mode, input.device)
        output.copy_(torch.ops.torchvision.roi_align(
            input, rois.to(input.dtype), float(spatial_scale), aligned_height, aligned_width,
            sampling_ratio, aligned))

    def roi_align_backward(self, grad_output, rois, argmax_y, argmax_x, grad_input, *,
                           aligned_height, aligned_width, spatial_scale, sampling_ratio,
                           pool_mode, aligned):
        if not self._routed(grad_output):
            return self._ext.roi_align_backward(
                grad_output, rois, argmax_y, argmax_x, grad_input,
                aligned_height=aligned_height, aligned_width=aligned_width,
                spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, pool_mode=pool_mode,
                aligned=aligned)
        self._check_avg(pool_mode, grad_output.device)
        batch, channels, height, width = grad_input.shape
        grad_input.copy_(torch.ops.torchvision._roi_align_backward(
            grad_output, rois.to(grad_output.dtype), float(spatial_scale), aligned_height,
            aligned_width, batch, channels, height, width, sampling_ratio, aligned))

    @staticmethod
    def _check_avg(pool_mode, device):
        if pool_mode != _AVG_POOL:
            raise NotImplementedError(
                f"RoIAlign(pool_mode='max') on {device}: torchvision averages only; build mmcv "
                'with CUDA ops (FORCE_CUDA=1) for this model')


def route_to_torchvision(devices: Iterable[str]) -> None:
    """Serve mmcv's NMS and RoIAlign from torchvision for tensors on ``devices`` (idempotent)."""
    devices = tuple(devices)
    for name in ROUTED_MODULES:
        module = importlib.import_module(name)
        ext = module.ext_module
        if isinstance(ext, TorchvisionKernels):
            ext.devices = tuple(dict.fromkeys(ext.devices + devices))
        else:
            module.ext_module = TorchvisionKernels(ext, devices)


def restore_mmcv_kernels() -> None:
    """Undo :func:`route_to_torchvision`."""
    for name in ROUTED_MODULES:
        module = importlib.import_module(name)
        if isinstance(module.ext_module, TorchvisionKernels):
            module.ext_module = module.ext_module._ext


def route_cuda_ops_to_torchvision() -> bool:
    """With a GPU and an mmcv without CUDA kernels, run mmcv's NMS and RoIAlign on CUDA tensors
    with torchvision's kernels. True when routed; False (nothing changed) when there is no GPU,
    no mmcv ops at all, or mmcv has its own CUDA kernels. Without torchvision it warns that
    detectors will fail on the GPU and how to fix it (backbones and segmentors need neither op).
    """
    if not torch.cuda.is_available():
        return False
    from mmcv.utils import ext_loader
    if not ext_loader.check_ops_exist() or mmcv_has_cuda_ops():
        return False
    try:
        route_to_torchvision(('cuda', ))
    except ImportError:
        import warnings
        warnings.warn(
            'mmcv was built with CPU ops only and torchvision is not installed: NMS and '
            'RoIAlign (detectors) will fail on CUDA tensors. Install the torchvision that '
            f'matches torch {torch.__version__}, or build mmcv with CUDA ops '
            '(RESTV2_CUDA=1 RESTV2_MMCV_CUDA=1 bash tools/setup_env.sh).')
        return False
    return True
