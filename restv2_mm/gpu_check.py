"""The GPU check: one prepared run that proves ResTv2 on CUDA and measures it (docs/gpu.md).

``tools/gpu_check.sh`` sets the machine up and runs ``python -m restv2_mm.gpu_check``, which runs
these steps in this order (a step whose estimate no longer fits the time left is skipped and
the report says so; ``--only`` / ``--skip`` choose by name):

    cuda-tests         python -m pytest -m cuda tests/test_cuda.py
    bench-fp32         tools/benchmark.py --device cuda at 1280x800: ResTv2-T in each attention
                       style and Swin-T; backbone inference, training step and its peak memory,
                       full Mask R-CNN inference with 100 detections each (the paper's FPS)
    bench-fp16         the same under --amp fp16
    quick-start-train  tools/train.py configs/mask_rcnn_restv2_t_tiny_coco.py, its 20 epochs
                       (AmpOptimWrapper: fp16 on a GPU)
    quick-start-test   tools/test.py on the epoch_20.pth: COCO bbox / segm mAP
    upernet-fp32       tools/benchmark.py: UperNet-T vs Swin-T UperNet, whole 2048x512 images
    upernet-fp16       the same under --amp fp16

It writes ``OUT/gpu_check.json`` (every step's command, time, status and results, the benchmark
reports whole) and ``OUT/gpu_check.md`` (the tables) after every step, so a run cut short keeps
what it measured, and ``OUT/gpu_check.log`` (every command's output). ``--dry-run`` does
everything that needs no GPU: parses each step's arguments with its own tool, builds every
benchmark candidate on the meta device, collects the cuda tests and loads the quick-start
config.
"""
import argparse
import datetime
import importlib.util
import json
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICK_START = 'configs/mask_rcnn_restv2_t_tiny_coco.py'
# README "Quick start", measured 2026-11-30 on a 2-core AMD EPYC without AMX (fp32: without
# CUDA the config's AmpOptimWrapper falls back to fp32).
CPU_QUICK_START = dict(train_s=840, bbox_mAP=0.889, segm_mAP=0.911,
                       where='README, 2-core CPU, fp32, 2026-11-30')
MIN_MAP = 0.6  # "it learned": the bar of tests/test_convergence.py
# The paper's GPU numbers (V100): Table 4 (Mask R-CNN, 1280x800) and Table 5 (UperNet, 2048x512).
PAPER_FPS = {'Mask R-CNN': dict(restv2=25.0, swin=21.8), 'UperNet': dict(restv2=22.4, swin=21.1)}
RESERVE_S = 15  # kept back at the end for writing the report
STYLES = ['global', 'win', 'cwin', 'hwin']


@dataclass
class CheckStep:
    """One step: a command of the project (run with this interpreter) and how to read it."""
    name: str
    kind: str  # 'pytest' | 'benchmark' | 'train' | 'test'
    what: str
    estimate_s: int  # on one H100-class GPU, the tools' start-up included (docs/gpu.md)
    args: List[str]  # after the interpreter; WORK and OUT are placeholders

    def command(self, work: str) -> List[str]:
        return [sys.executable] + [a.replace('WORK', work) for a in self.args]


def bench_args(name: str, shape, models, modes, *extra) -> List[str]:
    return ['tools/benchmark.py', '--device', 'cuda', '--shape', *map(str, shape),
            '--models', *models, '--modes', *modes, '--warmup', '3', '--iters', '10',
            '--no-check', '--quiet', '--json', f'WORK/{name}.json', *extra]


DETECTOR_BENCH = dict(shape=(800, 1280), models=['restv2', 'swin-t'],
                      modes=['infer', 'train', 'mem-train', 'model'])
UPERNET_BENCH = dict(shape=(512, 2048), models=['upernet-restv2', 'upernet-swin-t'],
                     modes=['model'])
STEPS = [
    CheckStep('cuda-tests', 'pytest', 'the cuda tests (tests/test_cuda.py)', 90,
              ['-m', 'pytest', '-m', 'cuda', 'tests/test_cuda.py', '-q', '-p', 'no:cacheprovider',
               '--junitxml', 'WORK/cuda_tests.xml']),
    CheckStep('bench-fp32', 'benchmark', 'ResTv2-T (4 styles) vs Swin-T, 1280x800, fp32', 75,
              bench_args('bench-fp32', **DETECTOR_BENCH) + ['--styles', *STYLES]),
    CheckStep('bench-fp16', 'benchmark', 'the same, --amp fp16', 70,
              bench_args('bench-fp16', **DETECTOR_BENCH) + ['--styles', *STYLES, '--amp', 'fp16']),
    CheckStep('quick-start-train', 'train', f'{QUICK_START}, 20 epochs', 75,
              [osp.join(REPO, 'tools', 'train.py'), osp.join(REPO, QUICK_START),
               '--work-dir', 'WORK/quick_start/work']),
    CheckStep('quick-start-test', 'test', 'its epoch_20.pth on the 16 held-out images', 35,
              [osp.join(REPO, 'tools', 'test.py'), osp.join(REPO, QUICK_START),
               'WORK/quick_start/work/epoch_20.pth', '--work-dir', 'WORK/quick_start/work']),
    CheckStep('upernet-fp32', 'benchmark', 'UperNet-T vs Swin-T UperNet, 2048x512, fp32', 35,
              bench_args('upernet-fp32', **UPERNET_BENCH) + ['--baseline', 'upernet-swin-t']),
    CheckStep('upernet-fp16', 'benchmark', 'the same, --amp fp16', 35,
              bench_args('upernet-fp16', **UPERNET_BENCH)
              + ['--baseline', 'upernet-swin-t', '--amp', 'fp16']),
]
STEP_NAMES = [s.name for s in STEPS]


# ----------------------------------------------------------------------------- results
def junit_summary(path: str) -> dict:
    """Counts and the failed tests' names from pytest's JUnit XML."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == 'testsuite' else root.find('testsuite')
    counts = {k: int(suite.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped')}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter('testcase')
              if case.find('failure') is not None or case.find('error') is not None]
    return dict(counts, passed=counts['tests'] - counts['failures'] - counts['errors']
                - counts['skipped'], failed=failed)


def coco_maps(output: str) -> Dict[str, float]:
    return {k: float(v) for k, v in
            re.findall(r'coco/(bbox_mAP|segm_mAP|bbox_mAP_50|segm_mAP_50): ([-0-9.]+)', output)}


def read_results(step: CheckStep, work: str, output: str, wall_s: float) -> (bool, dict):
    """(passed, results) of a step that exited with 0."""
    if step.kind == 'pytest':
        summary = junit_summary(osp.join(work, 'cuda_tests.xml'))
        return not (summary['failures'] or summary['errors']) and summary['passed'] > 0, summary
    if step.kind == 'benchmark':
        with open(osp.join(work, f'{step.name}.json')) as f:
            return True, json.load(f)
    if step.kind == 'train':
        iters = re.findall(r'Epoch\(train\)\s+\[(\d+)\]\[\s*(\d+)/(\d+)\]', output)
        fp32 = 'training in fp32' in output
        result = dict(train_s=wall_s, amp=not fp32, last_logged=iters[-1] if iters else None,
                      cpu=CPU_QUICK_START)
        return bool(iters) and iters[-1][0] == '20' and not fp32, result
    maps = coco_maps(output)
    result = dict(maps, cpu=CPU_QUICK_START, min_map=MIN_MAP)
    learned = all(maps.get(k, -1) >= MIN_MAP for k in ('bbox_mAP', 'segm_mAP'))
    return learned, result


# ----------------------------------------------------------------------------- running
def run_step(step: CheckStep, work: str, timeout: float, log) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED='1', PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get('PYTHONPATH')) if p))
    cwd = osp.join(work, 'quick_start') if step.kind in ('train', 'test') else REPO
    os.makedirs(cwd, exist_ok=True)
    command = step.command(work)
    log.write(f'\n===== {step.name}: {" ".join(command)}\n')
    log.flush()
    start = time.perf_counter()
    # Its own process group: a step that runs out of time is stopped with everything it started
    # (torchrun's workers, the benchmark's memory workers).
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        log.write(output)
        return dict(status='timeout', wall_s=time.perf_counter() - start,
                    note=f'stopped after {timeout:.0f} s (the time left)', tail=output[-3000:])
    wall_s = time.perf_counter() - start
    log.write(output)
    log.flush()
    row = dict(wall_s=wall_s)
    try:
        passed, results = read_results(step, work, output, wall_s)
        row['results'] = results
    except (OSError, ValueError, ET.ParseError, AttributeError) as e:
        passed = False
        row['note'] = f'no results: {type(e).__name__}: {e}'
    row['status'] = 'passed' if proc.returncode == 0 and passed else 'failed'
    if row['status'] == 'failed':
        row['returncode'] = proc.returncode
        row['tail'] = output[-3000:]
    return row


def environment() -> dict:
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
               python=sys.version.split()[0], torch=torch.__version__, cuda=torch.version.cuda,
               cpus=os.cpu_count())
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(), gpu_count=torch.cuda.device_count(),
                   cudnn=torch.backends.cudnn.version())
    for lib in ('mmcv', 'mmengine', 'mmdet', 'mmseg', 'torchvision'):
        try:
            env[lib] = __import__(lib).__version__
        except ImportError:
            env[lib] = None
    try:
        from restv2_mm.utils.mmcv_cuda import mmcv_has_cuda_ops
        env['mmcv_cuda_ops'] = mmcv_has_cuda_ops()
    except ImportError:
        env['mmcv_cuda_ops'] = None
    return env


# ----------------------------------------------------------------------------- dry run
def load_benchmark_tool():
    spec = importlib.util.spec_from_file_location('benchmark_tool',
                                                  osp.join(REPO, 'tools', 'benchmark.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dry_run_step(step: CheckStep, work: str, cache: dict) -> dict:
    """Everything of ``step`` that needs no GPU; a row like :func:`run_step`'s."""
    start = time.perf_counter()
    if step.kind == 'benchmark':
        from restv2_mm.benchmark import dry_run
        tool = load_benchmark_tool()
        args = tool.parse_args(step.command(work)[2:] + ['--dry-run'])
        results = dry_run(tool.settings_from_args(args), args.candidates, args.modes, cache)
        note = f"{len(results['tasks'])} runs built on the meta device"
    elif step.kind == 'pytest':
        command = step.command(work)
        command = command[:command.index('--junitxml')] + ['--collect-only']
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        collected = re.findall(r'^tests/test_cuda\.py::\S+', proc.stdout, re.MULTILINE)
        if proc.returncode != 0 or not collected:
            raise RuntimeError(f'collecting the cuda tests failed:\n{proc.stdout[-3000:]}'
                               f'{proc.stderr[-3000:]}')
        results, note = dict(collected=collected), f'{len(collected)} cuda tests collected'
    else:
        from restv2_mm.utils import load_tool_config
        for path in step.args:
            if path.startswith(REPO) and not osp.isfile(path):
                raise FileNotFoundError(f'{step.name}: {path} does not exist')
        if QUICK_START not in cache:
            cfg, scope = load_tool_config(osp.join(REPO, QUICK_START))
            cache[QUICK_START] = dict(scope=scope, max_epochs=cfg.train_cfg.max_epochs,
                                      optim_wrapper=cfg.optim_wrapper.type)
        results = cache[QUICK_START]
        scope = results['scope']
        note = f"{QUICK_START} loads ({scope}, {results['max_epochs']} epochs)"
    return dict(status='dry-run ok', wall_s=time.perf_counter() - start, note=note,
                results=results)


# ----------------------------------------------------------------------------- report
def fps_rows(report: dict, ours: str, theirs: str) -> Optional[tuple]:
    rows = {r['name']: r for r in report['results']}
    if ours in rows and theirs in rows and 'model' in rows[ours] and 'model' in rows[theirs]:
        return rows[ours]['model']['img_per_s'], rows[theirs]['model']['img_per_s']
    return None


def markdown(check: dict, full: bool = True) -> str:
    """The report: the steps, the FPS against the paper's and (``full``) each benchmark's own
    tables and the end of each failed step's output."""
    from restv2_mm.benchmark import format_report
    env, steps = check['environment'], check['steps']
    ops = ('CUDA ops' if env['mmcv_cuda_ops'] else
           'CPU ops; NMS and RoIAlign on CUDA by torchvision')
    lines = [f"# GPU check, {env['date']}", '',
             f"{env.get('gpu', 'no GPU')}, torch {env['torch']} (CUDA {env['cuda']}), "
             f"mmcv {env['mmcv']} ({ops}), mmdet {env['mmdet']}, "
             f"mmseg {env['mmseg']}; set-up {check['setup_s']:.0f} s, whole check "
             f"{check['total_s']:.0f} s of a {check['budget_s']:.0f} s budget.", '',
             '| step | what | status | time s | estimate s | result |',
             '|---|---|---|---|---|---|']
    for step in STEPS:
        row = steps.get(step.name)
        if row is None:
            continue
        lines.append(f"| {step.name} | {step.what} | {row['status']} | "
                     f"{row.get('wall_s', 0):.0f} | {step.estimate_s} | "
                     f"{summary_of(step, row)} |")
    fps = []
    for label, key, ours, theirs in (('Mask R-CNN', 'bench', 'restv2-global', 'swin-t'),
                                     ('UperNet', 'upernet', 'upernet-restv2',
                                      'upernet-swin-t')):
        for precision in ('fp32', 'fp16'):
            row = steps.get(f'{key}-{precision}', {})
            pair = fps_rows(row['results'], ours, theirs) if 'results' in row and \
                'results' in row['results'] else None
            if pair:
                paper = PAPER_FPS[label]
                fps.append(f"| {label} | {precision} | {pair[0]:.1f} | {pair[1]:.1f} | "
                           f"{pair[0] / pair[1]:.2f} | {paper['restv2']} / {paper['swin']} = "
                           f"{paper['restv2'] / paper['swin']:.2f} |")
    if fps:
        lines += ['', '## Inference FPS, ResTv2-T vs Swin-T (batch 1)', '',
                  '| model | precision | ResTv2-T img/s | Swin-T img/s | ratio | paper (V100) |',
                  '|---|---|---|---|---|---|'] + fps
    if not full:
        return '\n'.join(lines) + '\n'
    for name in ('bench-fp32', 'bench-fp16', 'upernet-fp32', 'upernet-fp16'):
        row = steps.get(name, {})
        if row.get('status') == 'passed':
            lines += ['', f'## {name}', '', format_report(row['results']).strip()]
    for name, row in steps.items():
        if row.get('tail'):
            lines += ['', f'## {name}: {row["status"]}, end of its output', '', '```',
                      row['tail'].strip()[-2000:], '```']
    return '\n'.join(lines) + '\n'


def summary_of(step: CheckStep, row: dict) -> str:
    results = row.get('results') or {}
    if row['status'] not in ('passed', 'failed') or not results:
        return row.get('note', '')
    if step.kind == 'pytest':
        failed = ', '.join(results['failed'])
        return (f"{results['passed']} passed, {results['failures'] + results['errors']} failed, "
                f"{results['skipped']} skipped" + (f': {failed}' if failed else ''))
    if step.kind == 'train':
        cpu = results['cpu']
        return (f"{results['train_s']:.0f} s ({'AMP fp16' if results['amp'] else 'fp32'}), "
                f"CPU {cpu['train_s']} s ({cpu['where']})")
    if step.kind == 'test':
        cpu = results['cpu']
        return (f"bbox {results.get('bbox_mAP')} / segm {results.get('segm_mAP')} mAP (CPU "
                f"{cpu['bbox_mAP']} / {cpu['segm_mAP']}; learned if >= {MIN_MAP})")
    skipped = results.get('skipped')
    return f"{len(results['results'])} candidates" + (f"; skipped {skipped}" if skipped else '')


def write(check: dict, out: str) -> None:
    with open(osp.join(out, 'gpu_check.json'), 'w') as f:
        json.dump(check, f, indent=1)
    with open(osp.join(out, 'gpu_check.md'), 'w') as f:
        f.write(markdown(check))


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog='Steps: ' + ', '.join(STEP_NAMES))
    p.add_argument('--out', default='gpu_check_out', help='where gpu_check.{json,md,log} go')
    p.add_argument('--work', help='scratch folder: data, checkpoints, per-step files '
                   '(default: a new temporary folder, so OUT holds the three reports only)')
    p.add_argument('--budget', type=float, default=600,
                   help='seconds for the whole check, set-up included (default 600)')
    p.add_argument('--setup-seconds', type=float, default=0,
                   help='seconds already spent on set-up (tools/gpu_check.sh passes it)')
    p.add_argument('--only', nargs='+', choices=STEP_NAMES, metavar='STEP',
                   help='run these steps only')
    p.add_argument('--skip', nargs='+', choices=STEP_NAMES, default=[], metavar='STEP')
    p.add_argument('--dry-run', action='store_true',
                   help='everything that needs no GPU, on any machine; nothing is timed')
    args = p.parse_args(argv)
    if args.budget <= args.setup_seconds + RESERVE_S:
        p.error(f'--budget {args.budget:.0f} s leaves nothing after {args.setup_seconds:.0f} s '
                f'of set-up')
    if not args.dry_run and not torch.cuda.is_available():
        p.error('no CUDA device: the GPU check needs one (--dry-run checks it without)')
    args.work = args.work or tempfile.mkdtemp(prefix='restv2_gpu_check_')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.budget - args.setup_seconds - RESERVE_S
    os.makedirs(args.work, exist_ok=True)
    out, work = osp.abspath(args.out), osp.abspath(args.work)
    os.makedirs(out, exist_ok=True)
    check = dict(environment=environment(), dry_run=args.dry_run, budget_s=args.budget,
                 setup_s=args.setup_seconds, total_s=args.setup_seconds, work=work, steps={},
                 commands={s.name: ' '.join(s.command(work)[1:]) for s in STEPS})
    chosen = [s for s in STEPS if (not args.only or s.name in args.only)
              and s.name not in args.skip]
    cache = {}
    with open(osp.join(out, 'gpu_check.log'), 'a') as log:
        for step in STEPS:
            if step not in chosen:
                check['steps'][step.name] = dict(status='skipped', note='not chosen')
                continue
            left = deadline - time.perf_counter()
            if args.dry_run:
                row = dry_run_step(step, work, cache)
            elif step.kind == 'test' and check['steps'].get(
                    'quick-start-train', {}).get('status') != 'passed':
                row = dict(status='skipped', note='no trained quick-start checkpoint')
            elif left < step.estimate_s:
                row = dict(status='skipped', note=f'{left:.0f} s left, the step needs about '
                           f'{step.estimate_s} s')
            else:
                row = run_step(step, work, timeout=left, log=log)
            check['steps'][step.name] = row
            check['total_s'] = args.setup_seconds + time.perf_counter() - start
            write(check, out)
            print(f"[gpu_check] {step.name}: {row['status']} ({row.get('wall_s', 0):.0f} s)"
                  + (f" {row['note']}" if row.get('note') else ''), flush=True)
    print(markdown(check, full=False))
    print(f'[gpu_check] full report: {osp.join(out, "gpu_check.md")}, '
          f'{osp.join(out, "gpu_check.json")}')
    return check


if __name__ == '__main__':
    check = main()
    sys.exit(0 if all(r['status'] in ('passed', 'dry-run ok', 'skipped')
                      for r in check['steps'].values()) else 1)
