"""Side-by-side speed and memory of ResTv2 against MMDetection's own Swin-T and ResNet-50.

Every candidate is built from a config under identical settings (same input, batch, device,
precision, layout, thread count); backbones come from the configs' ``model.backbone`` and full
models from the configs themselves, always with ``init_cfg=None`` (nothing is downloaded).

Candidates (``--models``):
    restv2        our backbone / detector (``--config``, default configs/mask_rcnn_restv2_t.py)
    restv2-plain  the same weights through the plain EMSAv2 math path
                  (restv2_mm.models.reference: explicit q k^T softmax v per head, no SDPA)
    swin-t        mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py
    r50           mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py
``--styles global win cwin hwin`` replaces restv2 (and restv2-plain) by one candidate per
attention style (restv2-global, restv2-win, ...).

Measurements (``--modes``):
    infer       backbone forward, inference mode
    train       backbone training step: forward + backward of sum(mean(out)), grads set to None
    model       full model inference (``model.predict`` on a preprocessed batch)
    model-train full model training step (``model.loss`` on random boxes/masks + backward)
    mem-train   peak memory of one backbone training step
    mem-infer   peak memory of one backbone forward
``--flops`` adds backbone FLOPs (restv2_mm.utils.flops, SDPA counted as matmul).

Timing: every timed mode of every candidate is warmed up, then the runs are interleaved (one
run of each, in an order that rotates every round, ``--iters`` rounds) and the median is
reported, as latency (ms per batch) and throughput (img/s), and as a ratio to ``--baseline``.

Memory: each measurement runs in a fresh subprocess (no allocator state shared between
candidates). After one warm-up step and ``malloc_trim``, the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``) and the reported number is the peak RSS during one step minus the
RSS just before it (CPU; Linux), or ``torch.cuda.max_memory_allocated`` minus the memory
allocated before the step (CUDA). The weights, and the input, are thus not counted; gradients
and activations are.

Example (the README's numbers)::

    python tools/benchmark.py --shape 800 1280 --threads 2
    python tools/benchmark.py --shape 512 512 --threads 2 --modes infer
    python tools/benchmark.py --models restv2 --styles global win cwin hwin --modes infer mem-train --flops
"""
import argparse
import ctypes
import datetime
import json
import logging
import os.path as osp
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SWIN_CONFIG = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
R50_CONFIG = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
OUR_CONFIG = osp.join(ROOT, 'configs', 'mask_rcnn_restv2_t.py')
ALL_MODELS = ('restv2', 'restv2-plain', 'swin-t', 'r50')
TIMED_MODES = ('infer', 'train', 'model', 'model-train')
MEMORY_MODES = ('mem-train', 'mem-infer')
ALL_MODES = TIMED_MODES + MEMORY_MODES
STYLES = ('global', 'win', 'cwin', 'hwin')


# ---------------------------------------------------------------------------- arguments
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=OUR_CONFIG, help='our detector config (ResTv2 backbone)')
    p.add_argument('--models', nargs='+', default=list(ALL_MODELS), choices=ALL_MODELS)
    p.add_argument('--styles', nargs='+', choices=STYLES,
                   help='one restv2 candidate per attention style (default: the config\'s)')
    p.add_argument('--modes', nargs='+', default=['infer', 'train', 'mem-train'], choices=ALL_MODES)
    p.add_argument('--baseline', default='swin-t', help='candidate the ratios are relative to')
    p.add_argument('--shape', nargs=2, type=int, default=[800, 1280], metavar=('H', 'W'))
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--warmup', type=int, default=1, help='untimed runs per candidate and mode')
    p.add_argument('--iters', type=int, default=5, help='timed, interleaved rounds')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (CPU)')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--amp', choices=['fp16', 'bf16'], help='autocast precision')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--compile', action='store_true', help='torch.compile the timed modules')
    p.add_argument('--flops', action='store_true', help='backbone FLOPs of every candidate')
    p.add_argument('--no-check', action='store_true',
                   help='skip the max-abs-difference check of restv2 against restv2-plain')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', metavar='PATH', help="write the results as JSON ('-': stdout)")
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    p.add_argument('--worker', help=argparse.SUPPRESS)  # internal: one memory measurement
    args = p.parse_args(argv)
    if args.baseline not in candidate_names(args):
        args.baseline = None
    return args


def candidate_names(args):
    names = []
    for model in args.models:
        if model.startswith('restv2') and args.styles:
            names += [f'{model}-{s}' for s in args.styles]
        else:
            names.append(model)
    return names


# ---------------------------------------------------------------------------- building
def _load_config(path):
    from restv2_mm.utils.flops import load_config
    return load_config(path)


def _candidate_config(args, name):
    """(config, plain, style) of a candidate."""
    if name.startswith('restv2'):
        cfg = _load_config(args.config)
        rest = name[len('restv2'):].lstrip('-')
        plain = rest.startswith('plain')
        style = rest[len('plain'):].lstrip('-') if plain else rest
        if style:
            cfg.model.backbone.attn_style = style
        return cfg, plain
    return _load_config(SWIN_CONFIG if name == 'swin-t' else R50_CONFIG), False


def build_candidate(args, name, full_model):
    import restv2_mm  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger
    from restv2_mm.models.reference import to_plain
    register_all_modules(init_default_scope=True)
    cfg, plain = _candidate_config(args, name)
    cfg.model.backbone.init_cfg = None  # never download / read weights
    torch.manual_seed(args.seed)
    if full_model:
        model = MODELS.build(cfg.model)
    else:
        model = MODELS.build(cfg.model.backbone)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)  # init_weights logs every tensor of mmdet's models
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    if plain:
        model = to_plain(model, copy_model=False)
    model = model.to(args.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_input(args):
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, *args.shape, generator=g).to(args.device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def detection_samples(args, with_gt):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    H, W = args.shape
    g = torch.Generator().manual_seed(args.seed)
    samples = []
    for _ in range(args.batch):
        s = DetDataSample(metainfo=dict(img_shape=(H, W), ori_shape=(H, W), pad_shape=(H, W),
                                        batch_input_shape=(H, W), scale_factor=(1., 1.)))
        if with_gt:
            n = 8
            xy = torch.rand(n, 2, generator=g) * torch.tensor([W * .7, H * .7])
            wh = (torch.rand(n, 2, generator=g) * .25 + .05) * torch.tensor([W, H])
            boxes = torch.cat([xy, xy + wh], 1)
            masks = torch.zeros(n, H, W, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                masks[i, y0:y1, x0:x1] = 1
            gt = InstanceData(bboxes=boxes, labels=torch.randint(0, 80, (n, ), generator=g),
                              masks=BitmapMasks(masks.numpy(), H, W))
            s.gt_instances = gt.to(args.device) if args.device != 'cpu' else gt
        samples.append(s)
    return samples


def autocast(args):
    if not args.amp:
        return nullcontext()
    dtype = torch.float16 if args.amp == 'fp16' else torch.bfloat16
    return torch.autocast(device_type=args.device, dtype=dtype)


def make_step(args, name, mode):
    """A no-argument callable running one measured step of ``mode`` on candidate ``name``."""
    full = mode.startswith('model')
    training = mode in ('train', 'model-train', 'mem-train')
    model = build_candidate(args, name, full)
    model.train(training)
    x = make_input(args)
    fn = model
    if args.compile:
        fn = torch.compile(model)
    if full:
        samples = detection_samples(args, with_gt=training)
        if training:
            loss_fn = torch.compile(model.loss) if args.compile else model.loss

            def step():
                model.zero_grad(set_to_none=True)
                with autocast(args):
                    losses = loss_fn(x, samples)
                loss, _ = model.parse_losses(losses)
                loss.backward()
        else:
            predict = torch.compile(model.predict) if args.compile else model.predict

            def step():
                with torch.inference_mode(), autocast(args):
                    predict(x, samples, rescale=False)
    elif training:
        def step():
            model.zero_grad(set_to_none=True)
            with autocast(args):
                outs = fn(x)
                loss = sum(o.float().mean() for o in outs)
            loss.backward()
    else:
        def step():
            with torch.inference_mode(), autocast(args):
                fn(x)
    step.model = model
    return step


def sync(args):
    if args.device == 'cuda':
        torch.cuda.synchronize()


def has_full_model(args, name):
    return not name.startswith('restv2') or osp.isfile(args.config)


# ---------------------------------------------------------------------------- memory
def _rss_kb(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def _trim():
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_worker(args, name, mode):
    """One fresh-process memory measurement; returns MiB (peak during one step minus before)."""
    import gc
    step = make_step(args, name, mode)
    step()  # warm-up: lazy inits, allocator and oneDNN caches
    step.model.zero_grad(set_to_none=True)
    gc.collect()
    sync(args)
    if args.device == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        sync(args)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    _trim()
    before = _rss_kb('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak-RSS mark (VmHWM) to the current RSS
    step()
    return (_rss_kb('VmHWM') - before) / 1024


def run_memory(args, name, mode):
    cmd = [sys.executable, osp.abspath(__file__), '--worker', json.dumps([name, mode])]
    cmd += worker_argv(args)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f'memory worker {name}/{mode} failed:\n{proc.stderr[-3000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])['peak_mib']


def worker_argv(args):
    argv = ['--config', args.config, '--shape', *map(str, args.shape), '--batch', str(args.batch),
            '--device', args.device, '--seed', str(args.seed), '--quiet']
    if args.threads:
        argv += ['--threads', str(args.threads)]
    if args.amp:
        argv += ['--amp', args.amp]
    if args.channels_last:
        argv.append('--channels-last')
    if args.compile:
        argv.append('--compile')
    return argv


# ---------------------------------------------------------------------------- main run
class Progress:
    def __init__(self, total, quiet):
        self.bar = None
        if not quiet:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass
        self.total, self.done, self.quiet = total, 0, quiet

    def update(self, what):
        self.done += 1
        if self.bar is not None:
            self.bar.set_description(what)
            self.bar.update(1)
        elif not self.quiet:
            print(f'[{self.done}/{self.total}] {what}', file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def check_numerics(args, names):
    """Max |fast - plain| over the backbone outputs for each restv2 / restv2-plain pair."""
    diffs = {}
    for name in names:
        if not name.startswith('restv2-plain'):
            continue
        fast = 'restv2' + name[len('restv2-plain'):]
        if fast not in names:
            continue
        x = make_input(args)
        outs = []
        for n in (fast, name):
            m = build_candidate(args, n, full_model=False)
            m.eval()
            with torch.inference_mode(), autocast(args):
                outs.append([o.float() for o in m(x)])
        diffs[f'{fast}/{name}'] = max((a - b).abs().max().item() for a, b in zip(*outs))
    return diffs


def backbone_flops(args, name):
    from restv2_mm.utils.flops import measure_model
    model = build_candidate(args, name, full_model=False)
    model.eval()  # (mmdet's SwinTransformer.train returns None: no chaining)
    x = make_input(args)
    with torch.no_grad():
        return measure_model(model, x)


def environment(args):
    cpu = platform.processor() or ''
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), cpu)
    except OSError:
        pass
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
               torch=torch.__version__, python=platform.python_version(), cpu=cpu,
               threads=torch.get_num_threads(), device=args.device)
    if args.device == 'cuda':
        env['gpu'] = torch.cuda.get_device_name()
    try:
        import mmdet
        env['mmdet'] = mmdet.__version__
    except ImportError:
        pass
    return env


def ratio(a, b):
    return a / b if a is not None and b else None


def run(args):
    names = candidate_names(args)
    timed = [m for m in args.modes if m in TIMED_MODES]
    memory = [m for m in args.modes if m in MEMORY_MODES]
    tasks = [(n, m) for m in timed for n in names
             if not m.startswith('model') or has_full_model(args, n)]
    skipped = [f'{n}/{m}' for m in timed for n in names if (n, m) not in tasks]
    total = len(tasks) * (args.warmup + args.iters) + len(names) * len(memory)
    progress = Progress(total, args.quiet)

    steps = {}
    for task in tasks:
        steps[task] = make_step(args, *task)
        for _ in range(args.warmup):
            steps[task]()
            sync(args)
            progress.update(f'warm-up {task[0]} {task[1]}')
    times = {task: [] for task in tasks}
    for i in range(args.iters):
        shift = i % max(len(tasks), 1)
        for task in tasks[shift:] + tasks[:shift]:  # rotate: no candidate always runs first
            sync(args)
            start = time.perf_counter()
            steps[task]()
            sync(args)
            times[task].append(time.perf_counter() - start)
            progress.update(f'{task[0]} {task[1]} ({i + 1}/{args.iters})')
    steps.clear()

    peaks = {}
    for mode in memory:  # one fresh subprocess each, candidates alternating
        for name in names:
            peaks[(name, mode)] = run_memory(args, name, mode)
            progress.update(f'memory {name} {mode}')
    progress.close()

    results = []
    for name in names:
        row = dict(name=name)
        for mode in timed:
            if (name, mode) in times:
                ts = times[(name, mode)]
                med = statistics.median(ts)
                row[mode] = dict(median_ms=med * 1e3, latency_ms=med * 1e3,
                                 img_per_s=args.batch / med, times_ms=[t * 1e3 for t in ts])
        for mode in memory:
            row[mode] = dict(peak_mib=peaks[(name, mode)])
        results.append(row)
    if args.flops:
        for row in results:
            row['flops'] = backbone_flops(args, row['name'])

    def value(row, mode):
        m = row.get(mode)
        return None if m is None else m.get('median_ms', m.get('peak_mib'))

    by_name = {row['name']: row for row in results}
    ratios = {}
    for mode in timed + memory:
        r = {}
        for row in results:
            if args.baseline and row['name'] != args.baseline:
                q = ratio(value(row, mode), value(by_name[args.baseline], mode))
                if q is not None:
                    r[f"{row['name']}/{args.baseline}"] = q
            if row['name'].startswith('restv2-plain'):
                fast = 'restv2' + row['name'][len('restv2-plain'):]
                if fast in by_name:
                    q = ratio(value(by_name[fast], mode), value(row, mode))
                    if q is not None:
                        r[f'{fast}/{row["name"]}'] = q
        ratios[mode] = r
    report = dict(environment=environment(args),
                  settings=dict(shape=list(args.shape), batch=args.batch, warmup=args.warmup,
                                iters=args.iters, amp=args.amp, channels_last=args.channels_last,
                                compile=args.compile, config=args.config, baseline=args.baseline,
                                modes=args.modes),
                  results=results, ratios=ratios, skipped=skipped)
    if not args.no_check:
        report['max_abs_diff'] = check_numerics(args, names)
    return report


def format_table(report):
    settings, env = report['settings'], report['environment']
    base = settings['baseline']
    modes = [m for m in settings['modes']
             if any(m in row for row in report['results'])]
    header = ['candidate']
    for m in modes:
        if m in MEMORY_MODES:
            header += [f'{m} MiB']
        else:
            header += [f'{m} ms', 'img/s']
        if base:
            header.append(f'x {base}')
    if any('flops' in row for row in report['results']):
        header += ['GFLOPs', 'matmul G']
    lines = []
    for row in report['results']:
        cells = [row['name']]
        for m in modes:
            r = row.get(m)
            if m in MEMORY_MODES:
                cells.append('-' if r is None else f"{r['peak_mib']:.0f}")
            else:
                cells += ['-', '-'] if r is None else [f"{r['median_ms']:.1f}", f"{r['img_per_s']:.2f}"]
            if base:
                q = report['ratios'].get(m, {}).get(f"{row['name']}/{base}")
                cells.append('1.00' if row['name'] == base and r else ('-' if q is None else f'{q:.2f}'))
        if 'flops' in row:
            cells += [f"{row['flops']['total'] / 1e9:.1f}", f"{row['flops']['matmul'] / 1e9:.1f}"]
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = lambda cells: '| ' + ' | '.join(str(c).ljust(w) for c, w in zip(cells, widths)) + ' |'
    out = [f"{env['date']}  {env['cpu']}  threads={env['threads']}  torch {env['torch']}  "
           f"device={env['device']}  shape={settings['shape'][0]}x{settings['shape'][1]}  "
           f"batch={settings['batch']}  amp={settings['amp']}  channels_last="
           f"{settings['channels_last']}  compile={settings['compile']}  "
           f"median of {settings['iters']} interleaved runs",
           fmt(header), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
    out += [fmt(cells) for cells in lines]
    fast_plain = {m: {k: v for k, v in r.items() if k.split('/')[1].startswith('restv2-plain')}
                  for m, r in report['ratios'].items()}
    for m, r in fast_plain.items():
        for k, v in r.items():
            out.append(f'{m}: {k} = {v:.2f}')
    for k, v in report.get('max_abs_diff', {}).items():
        out.append(f'max |{k.replace("/", " - ")}| over backbone outputs: {v:.2e}')
    if report['skipped']:
        out.append(f"skipped (no full-model config): {', '.join(report['skipped'])}")
    return '\n'.join(out)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device available')
    if args.worker:
        name, mode = json.loads(args.worker)
        print(json.dumps(dict(peak_mib=memory_worker(args, name, mode))))
        return
    report = run(args)
    if args.json == '-':
        print(json.dumps(report, indent=1))
    else:
        print(format_table(report))
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(report, f, indent=1)


if __name__ == '__main__':
    main()
