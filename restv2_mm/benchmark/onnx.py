"""The ONNX Runtime candidates (``NAME-onnx``), run on the CPU.

``infer``: the backbone, exported with :func:`restv2_mm.deploy.export_backbone_onnx`.
``model``: the whole detector, exported with :func:`restv2_mm.deploy.export_detector` from the
candidate's config with the benchmark's equal head work (score threshold 0, ``--detections``
boxes per image, every RPN proposal kept): image in, boxes, scores, labels and 28 x 28 mask
probabilities out. Mask pasting is not in the graph (it is mmdet's post-processing into the
original image; PyTorch's ``model`` time has it as the "mask pasting" part).

Each is exported once per run at exactly the benchmark's (batch, H, W) (mmdet's Swin-T graphs
are only correct at their traced shape) into a temporary directory. Float32 input; ``--amp``
does not apply (ONNX Runtime runs the graph as exported).
"""
import os.path as osp
import tempfile
from typing import Dict, List, Optional

import torch

from .candidates import Candidate, build_candidate, candidate_scope, make_input

ONNX_MODES = ('infer', 'model')
_EXPORTS = {}


def onnx_unsupported(cand: Candidate, mode: str) -> Optional[str]:
    """Why the ONNX Runtime candidate ``cand`` cannot run ``mode`` (None if it can)."""
    if mode not in ONNX_MODES:
        return 'ONNX Runtime: inference only (infer: backbone, model: whole detector)'
    if mode == 'model' and candidate_scope(cand) != 'mmdet':
        return 'ONNX Runtime model: whole detectors only'
    return None


def _session(settings, cand: Candidate, mode: str):
    """(PyTorch module, ONNX Runtime session, feed) of ``cand`` in ``mode``, exported once."""
    from restv2_mm.deploy import (export_backbone_onnx, export_detector, ort_session,
                                  spread_head_outputs)
    key = (cand.name, mode, tuple(settings.shape), settings.batch)
    if key not in _EXPORTS:
        if settings.device != 'cpu':
            raise ValueError(f'{cand.name}: the ONNX Runtime candidate runs on the CPU only')
        full_model = mode == 'model'
        module = build_candidate(cand, settings, full_model=full_model, seed=settings.seed)
        path = osp.join(tempfile.mkdtemp(prefix='restv2_bench_onnx_'), f'{cand.name}-{mode}.onnx')
        images = make_input(settings, settings.seed).contiguous().cpu()
        feed = {'input': images.numpy()}
        if full_model:
            # Random heads score every box alike, and which of near-equal boxes is kept is then
            # float noise: spread them so that the detection check means something. (The work
            # is the same: a score threshold of 0 keeps --detections boxes whatever the scores.)
            spread_head_outputs(module)
            export_detector(module, path, shape=tuple(settings.shape), dynamic=False,
                            batch=settings.batch)
            feed['image_sizes'] = torch.tensor([list(settings.shape)] * settings.batch).numpy()
        else:
            export_backbone_onnx(module, path, shape=tuple(settings.shape), dynamic=False,
                                 batch=settings.batch)
        threads = settings.threads or torch.get_num_threads()
        _EXPORTS[key] = (module, ort_session(path, threads=threads), feed)
    return _EXPORTS[key]


def onnx_step(settings, cand: Candidate, mode: str):
    """(PyTorch module, one-run callable) for ``mode`` in :data:`ONNX_MODES`."""
    reason = onnx_unsupported(cand, mode)
    if reason:
        raise ValueError(f'{cand.name}: {reason}, not {mode}')
    module, session, feed = _session(settings, cand, mode)

    def run_once():
        session.run(None, feed)

    return module, run_once


def onnx_max_abs_diff(settings, cand: Candidate) -> float:
    """Max |ONNX Runtime - PyTorch fp32| over the backbone outputs at the benchmark's input."""
    from restv2_mm.deploy import compare_with_torch
    backbone, session, _ = _session(settings, cand, 'infer')
    backbone.eval()
    diffs = compare_with_torch(backbone, session, make_input(settings, settings.seed).float())
    return float(diffs['max'])


def onnx_detection_match(settings, cand: Candidate) -> Dict[str, float]:
    """The whole detector at the benchmark's input: ONNX Runtime's detections against mmdet's
    ``predict`` (restv2_mm.deploy.detector_check: matched fraction, worst box IoU, largest
    score difference, mask IoU)."""
    from restv2_mm.deploy import compare_detector
    detector, session, feed = _session(settings, cand, 'model')
    return compare_detector(detector, session, torch.from_numpy(feed['input']),
                            torch.from_numpy(feed['image_sizes']))


def onnx_parity(settings, cands: List[Candidate], modes: List[str]) -> dict:
    """The report's ONNX Runtime checks: ``onnx_max_abs_diff`` (backbones, when ``infer``
    ran) and ``onnx_detection_match`` (whole detectors, when ``model`` ran)."""
    report = {}
    if 'infer' in modes:
        report['onnx_max_abs_diff'] = {c.name: onnx_max_abs_diff(settings, c) for c in cands}
    if 'model' in modes:
        report['onnx_detection_match'] = {c.name: onnx_detection_match(settings, c)
                                          for c in cands if onnx_unsupported(c, 'model') is None}
    return report
