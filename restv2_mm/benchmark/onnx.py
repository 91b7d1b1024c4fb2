"""The ONNX Runtime candidate: a backbone exported with restv2_mm.deploy, run on the CPU.

Exported once per run at exactly the benchmark's (batch, H, W) (mmdet's Swin-T graph is only
correct at its traced shape) into a temporary directory; ``inference`` only, float32 input
(``--amp`` does not apply: ONNX Runtime runs the graph as exported).
"""
import os.path as osp
import tempfile

import torch

from .candidates import Candidate, build_candidate, make_input

_EXPORTS = {}


def _session(settings, cand: Candidate):
    from restv2_mm.deploy import export_backbone_onnx, ort_session
    key = (cand.name, tuple(settings.shape), settings.batch)
    if key not in _EXPORTS:
        if settings.device != 'cpu':
            raise ValueError(f'{cand.name}: the ONNX Runtime candidate runs on the CPU only')
        backbone = build_candidate(cand, settings, full_model=False, seed=settings.seed)
        path = osp.join(tempfile.mkdtemp(prefix='restv2_bench_onnx_'), f'{cand.name}.onnx')
        export_backbone_onnx(backbone, path, shape=tuple(settings.shape), dynamic=False,
                             batch=settings.batch)
        threads = settings.threads or torch.get_num_threads()
        _EXPORTS[key] = (backbone, ort_session(path, threads=threads))
    return _EXPORTS[key]


def onnx_step(settings, cand: Candidate, mode: str):
    """(backbone module, one-run callable) for ``mode`` == 'infer'."""
    if mode != 'infer':
        raise ValueError(f'{cand.name}: ONNX Runtime runs backbone inference only, not {mode}')
    backbone, session = _session(settings, cand)
    feed = {'input': make_input(settings, settings.seed).contiguous().cpu().numpy()}

    def run_once():
        session.run(None, feed)

    return backbone, run_once


def onnx_max_abs_diff(settings, cand: Candidate) -> float:
    """Max |ONNX Runtime - PyTorch fp32| over the backbone outputs at the benchmark's input."""
    from restv2_mm.deploy import compare_with_torch
    backbone, session = _session(settings, cand)
    backbone.eval()
    diffs = compare_with_torch(backbone, session, make_input(settings, settings.seed).float())
    return float(diffs['max'])
