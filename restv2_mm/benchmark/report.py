"""The benchmark's results: JSON-ready dicts, ratios, and rich tables."""
import datetime
import io
import platform
import statistics
from typing import Dict, List, Optional

import torch

from .steps import MEMORY_MODES, NESTED, PARTS

# Column order of the parts table: the model's order, nested parts after their parent.
PART_ORDER = [label for label, _ in PARTS]
for _child, _parent in NESTED.items():
    PART_ORDER.insert(PART_ORDER.index(_parent) + 1, _child)
PART_ORDER.append('other')


def environment(device: str) -> dict:
    cpu = platform.processor() or ''
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), cpu)
    except OSError:
        pass
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
               torch=torch.__version__, python=platform.python_version(), cpu=cpu,
               threads=torch.get_num_threads(), device=device)
    if device == 'cuda':
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   capability='.'.join(map(str, torch.cuda.get_device_capability())))
        from restv2_mm.utils.mmcv_cuda import mmcv_has_cuda_ops
        env['nms_roi_align'] = 'mmcv' if mmcv_has_cuda_ops() else 'torchvision'
    for lib in ('mmcv', 'mmdet', 'mmseg', 'onnxruntime'):
        try:
            env[lib] = __import__(lib).__version__
        except ImportError:
            pass
    return env


def timing_row(times: List[float], batch: int, parts: Optional[List[dict]] = None) -> dict:
    med = statistics.median(times)
    row = dict(median_ms=med * 1e3, latency_ms=med * 1e3, img_per_s=batch / med,
               times_ms=[t * 1e3 for t in times])
    if parts:
        labels = list(dict.fromkeys(k for p in parts for k in p))
        row['parts_ms'] = {k: statistics.median(p.get(k, 0.) for p in parts) * 1e3
                           for k in labels}
    return row


def _value(row: dict, mode: str):
    m = row.get(mode)
    return None if m is None else m.get('median_ms', m.get('peak_mib'))


def _ratio(a, b):
    return a / b if a is not None and b else None


def plain_partner(name: str) -> Optional[str]:
    """'restv2-plain[-style]' -> 'restv2[-style]'."""
    return 'restv2' + name[len('restv2-plain'):] if name.startswith('restv2-plain') else None


def ratios(results: List[dict], modes: List[str], baseline: Optional[str]) -> Dict[str, dict]:
    """Per mode: 'candidate/baseline' for every other candidate, and fast/plain pairs."""
    by_name = {row['name']: row for row in results}
    out = {}
    for mode in modes:
        r = {}
        for row in results:
            if baseline and row['name'] != baseline:
                q = _ratio(_value(row, mode), _value(by_name[baseline], mode))
                if q is not None:
                    r[f"{row['name']}/{baseline}"] = q
            fast = plain_partner(row['name'])
            if fast in by_name:
                q = _ratio(_value(by_name[fast], mode), _value(row, mode))
                if q is not None:
                    r[f"{fast}/{row['name']}"] = q
        out[mode] = r
    return out


def headline(report: dict) -> str:
    s, env = report['settings'], report['environment']
    device = env['device']
    if 'gpu' in env:
        device += (f" ({env['gpu']}, CUDA {env['cuda']}, cudnn.benchmark="
                   f"{s.get('cudnn_benchmark')}, TF32 matmul/conv={s.get('tf32_matmul')}/"
                   f"{s.get('tf32_cudnn')})")
    return (f"{env['date']}  {env['cpu']}  threads={env['threads']}  torch {env['torch']}  "
            f"device={device}  shape={s['shape'][0]}x{s['shape'][1]}  batch={s['batch']}  "
            f"amp={s['amp']}  channels_last={s['channels_last']}  compile={s['compile']}  "
            f"malloc={s.get('malloc', 'system')}  median of {s['iters']} interleaved runs")


def _table(title: Optional[str] = None):
    from rich import box
    from rich.table import Table
    return Table(title=title, box=box.MARKDOWN, title_justify='left', pad_edge=True)


def tables(report: dict) -> list:
    """rich renderables: the headline, the main table, the full-model parts, notes."""
    from rich.text import Text
    settings = report['settings']
    base = settings['baseline']
    modes = [m for m in settings['modes'] if any(m in row for row in report['results'])]
    main = _table()
    main.add_column('candidate')
    for m in modes:
        if m in MEMORY_MODES:
            main.add_column(f'{m} MiB', justify='right')
        else:
            main.add_column(f'{m} ms', justify='right')
            main.add_column('img/s', justify='right')
        if base:
            main.add_column(f'x {base}', justify='right')
    with_flops = any('flops' in row for row in report['results'])
    if with_flops:
        main.add_column('GFLOPs', justify='right')
        main.add_column('matmul G', justify='right')
    for row in report['results']:
        cells = [row['name']]
        for m in modes:
            r = row.get(m)
            if m in MEMORY_MODES:
                cells.append('-' if r is None else f"{r['peak_mib']:.0f}")
            else:
                cells += ['-', '-'] if r is None else [f"{r['median_ms']:.1f}",
                                                       f"{r['img_per_s']:.2f}"]
            if base:
                q = report['ratios'].get(m, {}).get(f"{row['name']}/{base}")
                cells.append('1.00' if row['name'] == base and r else
                             ('-' if q is None else f'{q:.2f}'))
        if with_flops:
            f = row.get('flops')
            cells += ['-', '-'] if f is None else [f"{f['total'] / 1e9:.1f}",
                                                   f"{f['matmul'] / 1e9:.1f}"]
        main.add_row(*cells)
    out = [Text(headline(report)), main]

    if any('model' in row for row in report['results']):
        parts = _table(f"model (full inference): where the time goes, median ms; detectors keep "
                       f"{settings['detections']} detections per image (score threshold 0, "
                       f"every RPN proposal kept), segmentors infer the whole image")
        found = {k for row in report['results'] for k in row.get('model', {}).get('parts_ms', {})}
        labels = [k for k in PART_ORDER if k in found] + sorted(found - set(PART_ORDER))
        parts.add_column('candidate')
        for label in labels:
            parts.add_column(label, justify='right')
        parts.add_column('total', justify='right')
        for row in report['results']:
            m = row.get('model')
            if m and 'parts_ms' in m:
                parts.add_row(row['name'], *[f"{m['parts_ms'][k]:.1f}" if k in m['parts_ms']
                                             else '-' for k in labels],
                              f"{m['median_ms']:.1f}")
        if labels:
            out.append(parts)

    notes = []
    for m, r in report['ratios'].items():
        for k, v in r.items():
            if plain_partner(k.split('/')[1]):
                notes.append(f'{m}: {k} = {v:.2f}')
    for k, v in report.get('max_abs_diff', {}).items():
        notes.append(f'max |{k.replace("/", " - ")}| over backbone outputs: {v:.2e}')
    for k, v in report.get('onnx_max_abs_diff', {}).items():
        notes.append(f'max |{k}| (ONNX Runtime vs PyTorch fp32) over backbone outputs: {v:.2e}')
    if report['skipped']:
        notes.append(f"skipped: {', '.join(report['skipped'])}")
    if notes:
        out.append(Text('\n'.join(notes)))
    return out


def format_report(report: dict, width: int = 200) -> str:
    """The tables as plain text (markdown-style pipes, ready for a README)."""
    from rich.console import Console
    console = Console(width=width, record=True, file=io.StringIO(),
                      color_system=None, highlight=False)
    for item in tables(report):
        console.print(item)
    return console.export_text()
