"""One measured step per (candidate, mode), and the per-part timers of full-model inference.

Modes:
    infer        backbone forward, inference mode
    train        backbone training step: forward + backward of sum(mean(out)), grads set to None
    model        full model inference (``model.predict`` on a preprocessed batch)
    model-train  full model training step (``model.loss`` on random ground truth + backward)
    mem-train / mem-infer: the train / infer step, measured for peak memory (see memory.py)
"""
import functools
import time
from collections import defaultdict
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .candidates import Candidate, build_candidate, data_samples, make_input

TIMED_MODES = ('infer', 'train', 'model', 'model-train')
MEMORY_MODES = ('mem-train', 'mem-infer')
ALL_MODES = TIMED_MODES + MEMORY_MODES
AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}

# Where full-model inference spends its time: (label, dotted method path). A method found
# nowhere in a model is left out; nested parts (mask pasting inside the mask branch) are
# reported on their own and subtracted from their parent.
PARTS = (
    ('backbone', 'backbone.forward'),
    ('neck', 'neck.forward'),
    ('rpn', 'rpn_head.predict'),
    ('box head', 'roi_head.predict_bbox'),
    ('mask head', 'roi_head.predict_mask'),
    ('dense head', 'bbox_head.predict'),  # single-stage detectors
    ('decode head', 'decode_head.predict'),  # segmentors
)
NESTED = {'mask pasting': 'mask head'}


def autocast(settings):
    """Autocast in ``--amp``'s dtype, with mmcv's ops and the heads' post-processing in float32
    (restv2_mm.utils.amp); a no-op without ``--amp``."""
    if not settings.amp:
        return nullcontext()
    from restv2_mm.utils.amp import patch_mmcv_ops_for_autocast
    patch_mmcv_ops_for_autocast()
    return torch.autocast(device_type=settings.device, dtype=AMP_DTYPES[settings.amp])


def sync(settings):
    """Wait for the device's queued work (CUDA runs asynchronously): before reading a clock."""
    if settings.device == 'cuda':
        torch.cuda.synchronize()


def prepare_device(settings) -> None:
    """Process-wide set-up of ``settings.device`` before anything is built or timed.

    CUDA: ``cudnn.benchmark`` as ``settings.cudnn_benchmark`` says, and mmcv's NMS / RoIAlign
    served by torchvision when mmcv has no CUDA kernels (restv2_mm.utils.mmcv_cuda).
    """
    if settings.device != 'cuda':
        return
    torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    from restv2_mm.utils.mmcv_cuda import route_cuda_ops_to_torchvision
    route_cuda_ops_to_torchvision()


class PartTimer:
    """Wall time per model part, by wrapping the methods of :data:`PARTS` (instance attributes).

    ``runs`` holds one {part: seconds} dict per timed step, ``other`` being the rest of the step
    (data sample handling, RoI bookkeeping, result packing).
    """

    def __init__(self, model: torch.nn.Module, settings):
        self.settings = settings
        self.current: Optional[Dict[str, float]] = None
        self.runs: List[Dict[str, float]] = []
        for label, path in PARTS:
            *owner_path, method = path.split('.')
            owner = model
            for attr in owner_path:
                owner = getattr(owner, attr, None)
            if owner is not None and callable(getattr(owner, method, None)):
                setattr(owner, method, self._timed(label, getattr(owner, method)))
        for module in model.modules():  # every mask head, also the stages of Cascade
            if type(module).__name__.endswith('MaskHead') and hasattr(module, 'predict_by_feat'):
                module.predict_by_feat = self._timed('mask pasting', module.predict_by_feat)

    def _timed(self, label: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self.current is None:
                return fn(*args, **kwargs)
            sync(self.settings)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.settings)
                self.current[label] += time.perf_counter() - start

        return timed

    def start(self):
        self.current = defaultdict(float)

    def stop(self, total: float):
        parts = dict(self.current)
        for child, parent in NESTED.items():
            if child in parts and parent in parts:
                parts[parent] -= parts[child]
        parts['other'] = total - sum(parts.values())
        self.runs.append(parts)
        self.current = None


class Step:
    """A no-argument callable running one step of ``mode`` on ``cand``."""

    def __init__(self, settings, cand: Candidate, mode: str, seed: int = 0):
        if cand.onnx:
            from .onnx import onnx_step
            self.model, self.run_once = onnx_step(settings, cand, mode)
            self.parts = None
            return
        full = mode.startswith('model')
        training = mode in ('train', 'model-train', 'mem-train')
        model = build_candidate(cand, settings, full, seed)
        model.train(training)
        x = make_input(settings, seed)
        self.model, self.parts = model, None
        if full and settings.amp:
            from restv2_mm.utils.amp import prepare_amp_model
            prepare_amp_model(model)
        if full:
            samples = data_samples(settings, model.scope, with_gt=training, seed=seed)
            if training:
                loss_fn = torch.compile(model.loss) if settings.compile else model.loss

                def run_once():
                    model.zero_grad(set_to_none=True)
                    with autocast(settings):
                        losses = loss_fn(x, samples)
                    loss, _ = model.parse_losses(losses)
                    loss.backward()
            else:
                if not settings.compile:  # compiled graphs hide the parts
                    self.parts = PartTimer(model, settings)
                predict = torch.compile(model.predict) if settings.compile else model.predict

                def run_once():
                    with torch.inference_mode(), autocast(settings):
                        predict(x, samples)
        else:
            fn = torch.compile(model) if settings.compile else model
            if training:
                def run_once():
                    model.zero_grad(set_to_none=True)
                    with autocast(settings):
                        outs = fn(x)
                        loss = sum(o.float().mean() for o in outs)
                    loss.backward()
            else:
                def run_once():
                    with torch.inference_mode(), autocast(settings):
                        fn(x)
        self.run_once = run_once

    def __call__(self):
        self.run_once()


def interleaved_times(steps: Dict[Tuple[str, str], Step], iters: int, settings,
                      progress=None) -> Dict[Tuple[str, str], List[float]]:
    """``iters`` rounds of one run of every step, in an order rotating each round."""
    tasks = list(steps)
    times = {task: [] for task in tasks}
    for i in range(iters):
        shift = i % max(len(tasks), 1)
        for task in tasks[shift:] + tasks[:shift]:  # rotate: no candidate always runs first
            sync(settings)
            start = time.perf_counter()
            step = steps[task]
            if step.parts is not None:
                step.parts.start()
            step.run_once()
            sync(settings)
            elapsed = time.perf_counter() - start
            if step.parts is not None:
                step.parts.stop(elapsed)
            times[task].append(elapsed)
            if progress:
                progress(f'{task[0]} {task[1]} ({i + 1}/{iters})')
    return times
