"""Peak memory of one step.

CPU (Linux): each measurement in a fresh process, so no allocator state is shared between
candidates. After one warm-up step and ``malloc_trim``, the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``) and the reported number is the peak RSS during one step minus the
RSS just before it.
CUDA: in the benchmark's own process, after the timed runs: ``torch.cuda.max_memory_allocated``
during one step (after a warm-up step) minus the memory allocated just before it. The caching
allocator counts the bytes of live tensors, whatever it keeps cached, so no fresh process is
needed (and none pays CUDA's start-up again).
Either way weights and the input are not counted; gradients and activations are.

Run as ``python -m restv2_mm.benchmark.memory SETTINGS_JSON CANDIDATE_JSON MODE``.
"""
import ctypes
import dataclasses
import gc
import json
import os
import subprocess
import sys

import torch

from .candidates import ROOT, Candidate


def _rss_kb(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def _trim() -> None:
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_peak_mib(settings, cand: Candidate, mode: str) -> float:
    """Peak memory of one step of ``mode`` (``mem-train`` / ``mem-infer``) in this process."""
    from .steps import Step, sync
    step = Step(settings, cand, 'train' if mode == 'mem-train' else 'infer', settings.seed)
    step()  # warm-up: lazy inits, allocator and oneDNN caches
    if hasattr(step.model, 'zero_grad'):
        step.model.zero_grad(set_to_none=True)
    gc.collect()
    sync(settings)
    if settings.device == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        sync(settings)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    _trim()
    before = _rss_kb('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak-RSS mark (VmHWM) to the current RSS
    step()
    return (_rss_kb('VmHWM') - before) / 1024


def peak_mib(settings, cand: Candidate, mode: str) -> float:
    """Peak memory of one step of ``mode``: in this process on CUDA, in a fresh one on CPU."""
    if settings.device != 'cuda':
        return peak_mib_in_subprocess(settings, cand, mode)
    try:
        return measure_peak_mib(settings, cand, mode)
    finally:  # the step's model and tensors are gone: give their memory back for the next one
        gc.collect()
        torch.cuda.empty_cache()


def peak_mib_in_subprocess(settings, cand: Candidate, mode: str) -> float:
    cmd = [sys.executable, '-m', 'restv2_mm.benchmark.memory',
           json.dumps(dataclasses.asdict(settings)), json.dumps(dataclasses.asdict(cand)), mode]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f'memory worker {cand.name}/{mode} failed:\n{proc.stderr[-3000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])['peak_mib']


def _worker(argv):
    from .settings import Settings
    from .steps import prepare_device
    settings = Settings(**json.loads(argv[0]))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    prepare_device(settings)
    cand = Candidate(**json.loads(argv[1]))
    print(json.dumps(dict(peak_mib=measure_peak_mib(settings, cand, argv[2]))))


if __name__ == '__main__':
    _worker(sys.argv[1:])
