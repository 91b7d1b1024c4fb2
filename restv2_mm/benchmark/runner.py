"""One benchmark run: build, warm up, time interleaved, measure memory, check numerics; and
its dry run (everything built on the meta device, nothing timed)."""
import dataclasses
import warnings
from typing import Callable, List, Optional

import torch

from ..utils.cpu_malloc import keep_freed_memory
from . import report as rep
from .candidates import Candidate, build_candidate, candidate_scope, make_input
from .memory import peak_mib
from .settings import Settings
from .steps import (MEMORY_MODES, TIMED_MODES, Step, autocast, interleaved_times,
                    prepare_device, sync)


def check_numerics(settings: Settings, cands: List[Candidate]) -> dict:
    """Max |fast - plain| over the backbone outputs for each restv2 / restv2-plain pair."""
    by_name = {c.name: c for c in cands}
    diffs = {}
    for cand in cands:
        fast = rep.plain_partner(cand.name)
        if fast not in by_name:
            continue
        x = make_input(settings, settings.seed)
        outs = []
        for c in (by_name[fast], cand):
            m = build_candidate(c, settings, full_model=False, seed=settings.seed)
            m.eval()
            with torch.inference_mode(), autocast(settings):
                outs.append([o.float() for o in m(x)])
        diffs[f'{fast}/{cand.name}'] = max((a - b).abs().max().item() for a, b in zip(*outs))
    return diffs


def backbone_flops(settings: Settings, cand: Candidate) -> dict:
    from restv2_mm.utils.flops import measure_model
    model = build_candidate(cand, settings, full_model=False, seed=settings.seed)
    model.eval()  # (mmdet's SwinTransformer.train returns None: no chaining)
    with torch.no_grad():
        return measure_model(model, make_input(settings, settings.seed))


def supported(cand: Candidate, mode: str, settings: Settings) -> Optional[str]:
    """Why ``cand`` cannot run ``mode`` (None if it can)."""
    if cand.onnx and mode != 'infer':
        return 'ONNX Runtime: backbone inference only'
    if mode == 'model-train' and settings.batch < 2 and candidate_scope(cand) == 'mmseg':
        return "a segmentor's training step needs --batch >= 2 (BatchNorm of the 1x1 PPM map)"
    return None


def plan_tasks(settings: Settings, cands: List[Candidate], modes: List[str]):
    """(timed tasks, memory tasks, skipped) for ``modes``: (candidate, mode) pairs that can run,
    and 'name/mode (why not)' for those that cannot."""
    runnable = [(c, m) for m in modes for c in cands if supported(c, m, settings) is None]
    skipped = [f'{c.name}/{m} ({supported(c, m, settings)})' for m in modes for c in cands
               if supported(c, m, settings)]
    return ([t for t in runnable if t[1] in TIMED_MODES],
            [t for t in runnable if t[1] in MEMORY_MODES], skipped)


def cuda_settings(settings: Settings) -> dict:
    """The CUDA switches that change timings, for the report (nothing on other devices)."""
    if settings.device != 'cuda':
        return {}
    return dict(cudnn_benchmark=settings.cudnn_benchmark,
                tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                tf32_cudnn=torch.backends.cudnn.allow_tf32)


def dry_run(settings: Settings, cands: List[Candidate], modes: List[str],
            cache: Optional[dict] = None) -> dict:
    """Everything of :func:`run_benchmark` that needs no device: each (candidate, mode) that
    would run is built from its config on the meta device (no memory, no data), and each
    backbone is run there once, which checks its output shapes; full models are built only
    (mmcv's compiled ops have no meta kernels). Nothing is timed.

    Returns {'device': the device asked for, 'tasks': [{name, mode, params, outputs?}],
    'skipped': [...]}. ``cache`` (a dict kept between calls) builds each (candidate, backbone or
    full model, shape) once over several dry runs.
    """
    meta = dataclasses.replace(settings, device='meta')
    tasks, mem_tasks, skipped = plan_tasks(meta, cands, modes)
    built = {} if cache is None else cache
    rows = []
    for cand, mode in tasks + mem_tasks:
        if cand.onnx:
            skipped.append(f'{cand.name}/{mode} (ONNX Runtime: exported at run time only)')
            continue
        full = mode.startswith('model')
        key = (cand.name, cand.config, cand.style, cand.plain, full, tuple(settings.shape))
        if key not in built:
            model = build_candidate(cand, meta, full_model=full, seed=settings.seed)
            row = dict(name=cand.name, full_model=full,
                       params=sum(p.numel() for p in model.parameters()))
            if not full:
                model.eval()  # (mmdet's SwinTransformer.train returns None: no chaining)
                with torch.no_grad():
                    row['outputs'] = [list(o.shape) for o in model(make_input(meta))]
            built[key] = row
        rows.append(dict(built[key], mode=mode))
    return dict(device=settings.device, shape=list(settings.shape), tasks=rows, skipped=skipped)


def run_benchmark(settings: Settings, cands: List[Candidate], modes: List[str],
                  warmup: int = 1, iters: int = 5, baseline: Optional[str] = 'swin-t',
                  flops: bool = False, check: bool = True,
                  progress: Optional[Callable[[str], None]] = None,
                  set_total: Optional[Callable[[int], None]] = None) -> dict:
    """The report dict (see tools/benchmark.py); ``progress(text)`` is called after each run.

    ``settings.malloc == 'cached'`` sets the process's CPU allocator first
    (:func:`restv2_mm.utils.cpu_malloc.keep_freed_memory`); where that is impossible (no glibc)
    a warning says so and the report says 'system'.
    """
    if settings.malloc == 'cached' and settings.device == 'cpu' and not keep_freed_memory():
        warnings.warn("malloc='cached' needs glibc: the system allocator stays")
        settings.malloc = 'system'
    prepare_device(settings)
    names = [c.name for c in cands]
    if baseline not in names:
        baseline = None
    timed = [m for m in modes if m in TIMED_MODES]
    memory = [m for m in modes if m in MEMORY_MODES]
    tasks, mem_tasks, skipped = plan_tasks(settings, cands, timed + memory)
    if set_total:
        set_total(len(tasks) * (warmup + iters) + len(mem_tasks))
    progress = progress or (lambda text: None)

    steps = {}
    for cand, mode in tasks:
        step = steps[(cand.name, mode)] = Step(settings, cand, mode, settings.seed)
        for _ in range(warmup):
            step.run_once()
            sync(settings)
            progress(f'warm-up {cand.name} {mode}')
    for step in steps.values():  # warm-up runs are not part of the breakdown
        if step.parts is not None:
            step.parts.runs.clear()
    times = interleaved_times(steps, iters, settings, progress)
    parts = {task: step.parts.runs for task, step in steps.items() if step.parts is not None}
    steps.clear()

    peaks = {}
    for cand, mode in mem_tasks:  # CPU: one fresh subprocess each, candidates alternating
        peaks[(cand.name, mode)] = peak_mib(settings, cand, mode)
        progress(f'memory {cand.name} {mode}')

    results = []
    for name in names:
        row = dict(name=name)
        for mode in timed:
            if (name, mode) in times:
                row[mode] = rep.timing_row(times[(name, mode)], settings.batch,
                                           parts.get((name, mode)))
        for mode in memory:
            if (name, mode) in peaks:
                row[mode] = dict(peak_mib=peaks[(name, mode)])
        results.append(row)
    if flops:
        for cand, row in zip(cands, results):
            if not cand.onnx:
                row['flops'] = backbone_flops(settings, cand)

    report = dict(environment=rep.environment(settings.device),
                  settings=dict(shape=list(settings.shape), batch=settings.batch, warmup=warmup,
                                iters=iters, amp=settings.amp,
                                channels_last=settings.channels_last, compile=settings.compile,
                                config=settings.config, baseline=baseline, modes=list(modes),
                                detections=settings.detections, malloc=settings.malloc,
                                **cuda_settings(settings)),
                  results=results, ratios=rep.ratios(results, timed + memory, baseline),
                  skipped=skipped)
    if check:
        report['max_abs_diff'] = check_numerics(settings, cands)
    onnx_cands = [c for c in cands if c.onnx]
    if onnx_cands:
        from .onnx import onnx_max_abs_diff
        report['onnx_max_abs_diff'] = {c.name: onnx_max_abs_diff(settings, c) for c in onnx_cands}
    return report
