"""Deployment: ONNX export (every attention style, dynamic batch/height/width) and ONNX Runtime.

:mod:`restv2_mm.deploy.onnx`: backbones, backbone + neck and segmentors;
:mod:`restv2_mm.deploy.detector`: whole detectors (Mask R-CNN, Cascade, RetinaNet) as one graph
of standard operators, :mod:`~restv2_mm.deploy.detector_check` its check against mmdet's
``predict`` and :mod:`~restv2_mm.deploy.detector_data` images in / COCO metrics out.
``tools/deployment/export_onnx.py`` and ``tools/deployment/test_onnx.py`` are the command lines.
"""
from .detector import DetectorGraph, export_detector, exportable_detector
from .detector_check import (DEFAULT_TOLERANCE, Tolerance, compare_detector,
                             export_and_verify_detector, spread_head_outputs, verify_detector)
from .detector_data import (OnnxRuntimeDetector, evaluate_onnx, preprocess, run_images,
                            to_data_samples)
from .onnx import (DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, BackboneWithNeck, DynamicAdaptiveAvgPool2d,
                   SegmentorLogits, build_restv2_model, check_opset, compare_with_torch,
                   export_backbone_onnx, export_config, export_onnx, exportable_module,
                   make_pooling_exportable, ort_session, run_session, verify_onnx)

__all__ = [
    'DEFAULT_OPSET', 'DEFAULT_TOLERANCE', 'MAX_OPSET', 'MIN_OPSET', 'BackboneWithNeck',
    'DetectorGraph', 'DynamicAdaptiveAvgPool2d', 'OnnxRuntimeDetector', 'SegmentorLogits',
    'Tolerance', 'build_restv2_model', 'check_opset', 'compare_detector', 'compare_with_torch',
    'evaluate_onnx', 'export_and_verify_detector', 'export_backbone_onnx', 'export_config',
    'export_detector', 'export_onnx', 'exportable_detector', 'exportable_module',
    'make_pooling_exportable', 'ort_session', 'preprocess', 'run_images', 'run_session',
    'spread_head_outputs', 'to_data_samples', 'verify_detector', 'verify_onnx'
]
