"""Side-by-side speed and memory of backbones and full models (tools/benchmark.py).

candidates: what is compared (names, aliases, config paths, ONNX); steps: one measured step per
mode and the per-part timers; memory: peak memory in fresh processes; report: ratios and rich
tables; runner: one whole run.
"""
from .candidates import (ALIASES, BUILTIN, DETECTIONS_PER_IMAGE, OUR_CONFIG, STYLES, Candidate,
                         resolve_candidates)
from .report import format_report, tables
from .runner import dry_run, run_benchmark
from .settings import Settings
from .steps import ALL_MODES, MEMORY_MODES, TIMED_MODES

__all__ = ['ALIASES', 'ALL_MODES', 'BUILTIN', 'Candidate', 'DETECTIONS_PER_IMAGE', 'MEMORY_MODES',
           'OUR_CONFIG', 'STYLES', 'Settings', 'TIMED_MODES', 'dry_run', 'format_report',
           'resolve_candidates', 'run_benchmark', 'tables']
