"""Deployment: ONNX export (every attention style, dynamic batch/height/width) and ONNX Runtime.

See :mod:`restv2_mm.deploy.onnx`; ``tools/deployment/export_onnx.py`` is its command line.
"""
from .onnx import (DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, BackboneWithNeck, DynamicAdaptiveAvgPool2d,
                   SegmentorLogits, build_restv2_model, check_opset, compare_with_torch,
                   export_backbone_onnx, export_config, export_onnx, exportable_module,
                   make_pooling_exportable, ort_session, run_session, verify_onnx)

__all__ = [
    'DEFAULT_OPSET', 'MAX_OPSET', 'MIN_OPSET', 'BackboneWithNeck', 'DynamicAdaptiveAvgPool2d',
    'SegmentorLogits', 'build_restv2_model', 'check_opset', 'compare_with_torch',
    'export_backbone_onnx', 'export_config', 'export_onnx', 'exportable_module',
    'make_pooling_exportable', 'ort_session', 'run_session', 'verify_onnx'
]
