"""Side-by-side speed and memory of ResTv2 against MMDetection's / MMSegmentation's own models.

Every candidate is built from a config under identical settings (same input, batch, device,
precision, layout, thread count); backbones come from the configs' ``model.backbone`` and full
models from the configs themselves, always with ``init_cfg=None`` (nothing is downloaded).
The library behind this command line is restv2_mm.benchmark.

Candidates (``--models``):
    restv2          our backbone / model (``--config``, default configs/mask_rcnn_restv2_t.py)
    restv2-plain    the same weights through the plain EMSAv2 math path
                    (restv2_mm.models.reference: explicit q k^T softmax v per head, no SDPA)
    swin-t          mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py
    r50             mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py
    upernet-restv2  configs/upernet_restv2_t.py
    upernet-swin-t  mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py
    PATH.py, mmdet::..., mmseg::...   any detector or segmentor config (named by its file name)
    NAME-onnx       the backbone of NAME exported to ONNX and run by ONNX Runtime (infer only)
``--styles global win cwin hwin`` replaces restv2 (and restv2-plain) by one candidate per
attention style (restv2-global, restv2-win, ...).

Measurements (``--modes``):
    infer       backbone forward, inference mode
    train       backbone training step: forward + backward of sum(mean(out)), grads set to None
    model       full model inference (``model.predict`` on a preprocessed batch). Detectors keep
                ``--detections`` boxes per image (score threshold 0) and the RPN keeps all
                its proposals (NMS IoU threshold 1), so that every detector's RoI and mask heads
                get the same number of boxes; segmentors infer the whole image. A second table
                says where the time goes: backbone, neck, RPN, box head, mask head, mask
                pasting (or dense head / decode head), other.
    model-train full model training step (``model.loss`` on random ground truth + backward)
    mem-train   peak memory of one backbone training step
    mem-infer   peak memory of one backbone forward
``--flops`` adds backbone FLOPs (restv2_mm.utils.flops, SDPA counted as matmul).
``--amp bf16|fp16`` runs every mode under autocast; in the full-model modes NMS, RoIAlign and the
heads' post-processing run in float32 (restv2_mm.utils.amp, as tools/test.py --amp).

Timing: every timed mode of every candidate is warmed up, then the runs are interleaved (one
run of each, in an order that rotates every round, ``--iters`` rounds) and the median is
reported, as latency (ms per batch) and throughput (img/s), and as a ratio to ``--baseline``.

CUDA (``--device cuda``): the device is synchronised before the clock starts and before it is
read (CUDA runs asynchronously; the part timers synchronise too), ``cudnn.benchmark`` is on (cuDNN
picks its fastest convolutions in the warm-up runs, as MMDetection's FPS benchmark does;
``--no-cudnn-benchmark`` turns it off), and the defaults are 5 warm-up runs and 20 rounds
(CPU: 1 and 5). TF32 stays at torch's defaults, which the report records. With an mmcv built
with CPU ops only, NMS and RoIAlign on the GPU run torchvision's kernels
(restv2_mm/utils/mmcv_cuda.py; the report's environment says which).
``--dry-run`` builds every candidate of every mode on the meta device (backbones also run there
once, checking their output shapes), times nothing and needs no GPU: it checks a planned CUDA
run on any machine.

Allocator: by default (``--malloc cached``) freed CPU memory stays in the process, as with
jemalloc / tcmalloc or PyTorch's CUDA allocator; glibc's default (``--malloc system``) maps and
page-faults every large tensor afresh, which costs some models far more than others and depends
on what ran before in the process (restv2_mm/utils/cpu_malloc.py has the numbers).

Memory: on CPU each measurement runs in a fresh subprocess (no allocator state shared between
candidates). After one warm-up step and ``malloc_trim``, the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``) and the reported number is the peak RSS during one step minus the
RSS just before it (Linux). On CUDA it is ``torch.cuda.max_memory_allocated`` during one step
(after a warm-up step) minus the memory allocated before it, in the benchmark's process (the
allocator counts live tensors, whatever it caches). The weights, and the input, are thus not
counted; gradients and activations are.

Example (the numbers of docs/performance.md)::

    python tools/benchmark.py --shape 800 1280 --threads 2
    python tools/benchmark.py --shape 512 512 --threads 2 --modes infer
    python tools/benchmark.py --models restv2 --styles global win cwin hwin --modes infer mem-train --flops
    python tools/benchmark.py --models upernet-restv2 upernet-swin-t --baseline upernet-swin-t \\
        --modes model --shape 512 2048 --threads 2
    python tools/benchmark.py --device cuda --amp fp16 --models restv2 swin-t --modes model
"""
import argparse
import json
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from restv2_mm.benchmark import (ALL_MODES, DETECTIONS_PER_IMAGE, OUR_CONFIG,  # noqa: E402
                                 STYLES, Settings, dry_run, resolve_candidates,
                                 run_benchmark, tables)

# (warm-up runs, timed rounds) when not given: CUDA needs more warm-up (cuDNN's algorithm
# search, lazy module loading) and its runs are cheap.
DEFAULT_RUNS = {'cpu': (1, 5), 'cuda': (5, 20)}

DEFAULT_MODELS = ['restv2', 'restv2-plain', 'swin-t', 'r50']


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=OUR_CONFIG, help='config of restv2 / restv2-plain')
    p.add_argument('--models', nargs='+', default=DEFAULT_MODELS,
                   help='candidates: names, aliases or config paths (see above)')
    p.add_argument('--styles', nargs='+', choices=STYLES,
                   help='one restv2 candidate per attention style (default: the config\'s)')
    p.add_argument('--modes', nargs='+', default=['infer', 'train', 'mem-train'], choices=ALL_MODES)
    p.add_argument('--baseline', default='swin-t', help='candidate the ratios are relative to')
    p.add_argument('--shape', nargs=2, type=int, default=[800, 1280], metavar=('H', 'W'))
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--warmup', type=int, help='untimed runs per candidate and mode (default: '
                   '1 on CPU, 5 on CUDA)')
    p.add_argument('--iters', type=int, help='timed, interleaved rounds (default: 5 on CPU, '
                   '20 on CUDA)')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (CPU)')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--amp', choices=['fp16', 'bf16'], help='autocast precision')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--compile', action='store_true', help='torch.compile the timed modules')
    p.add_argument('--detections', type=int, default=DETECTIONS_PER_IMAGE,
                   help='model mode: detections kept per image (score threshold 0)')
    p.add_argument('--malloc', choices=['cached', 'system'], default='cached',
                   help="CPU allocator policy of the timed runs: 'cached' keeps freed memory in "
                   "the process (restv2_mm.utils.cpu_malloc), 'system' leaves glibc's defaults, "
                   "whose page faults depend on what ran before")
    p.add_argument('--no-cudnn-benchmark', action='store_true',
                   help='CUDA: keep cuDNN\'s default convolution algorithms (no autotuning)')
    p.add_argument('--dry-run', action='store_true',
                   help='build every candidate on the meta device and time nothing (no GPU '
                   'needed, also for --device cuda)')
    p.add_argument('--flops', action='store_true', help='backbone FLOPs of every candidate')
    p.add_argument('--no-check', action='store_true',
                   help='skip the max-abs-difference check of restv2 against restv2-plain')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', metavar='PATH', help="write the results as JSON ('-': stdout)")
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    args = p.parse_args(argv)
    try:
        args.candidates = resolve_candidates(args.models, args.config, args.styles)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    if args.device == 'cuda' and not torch.cuda.is_available() and not args.dry_run:
        p.error('--device cuda: no CUDA device available (--dry-run checks the run without one)')
    default_warmup, default_iters = DEFAULT_RUNS[args.device]
    args.warmup = default_warmup if args.warmup is None else args.warmup
    args.iters = default_iters if args.iters is None else args.iters
    if args.warmup < 0 or args.iters < 1:
        p.error(f'--warmup must be >= 0 and --iters >= 1, got {args.warmup} and {args.iters}')
    if args.detections < 1:
        p.error(f'--detections must be >= 1, got {args.detections}')
    return args


def settings_from_args(args) -> Settings:
    return Settings(shape=list(args.shape), batch=args.batch, device=args.device,
                    amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                    threads=args.threads, seed=args.seed, config=args.config,
                    detections=args.detections, malloc=args.malloc,
                    cudnn_benchmark=not args.no_cudnn_benchmark)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from_args(args)
    if args.dry_run:
        plan = dry_run(settings, args.candidates, args.modes)
        if args.json:
            write_json(plan, args.json)
        if args.json != '-':
            for task in plan['tasks']:
                print(f"built on meta: {task['name']} {task['mode']} "
                      f"({task['params'] / 1e6:.1f} M parameters"
                      + (f", outputs {task['outputs']})" if 'outputs' in task else ')'))
            for skip in plan['skipped']:
                print(f'skipped: {skip}')
            print(f"dry run: {len(plan['tasks'])} runs would be timed on {args.device}")
        return
    run = dict(settings=settings, cands=args.candidates, modes=args.modes, warmup=args.warmup,
               iters=args.iters, baseline=args.baseline, flops=args.flops,
               check=not args.no_check)
    if args.quiet:
        report = run_benchmark(**run)
    else:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)
        with Progress(TextColumn('{task.description}'), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=Console(stderr=True)) as bar:
            task = bar.add_task('building', total=None)
            report = run_benchmark(
                **run, set_total=lambda n: bar.update(task, total=n),
                progress=lambda text: bar.update(task, advance=1, description=text))
    if args.json == '-':
        write_json(report, '-')
        return
    from rich.console import Console
    console = Console(highlight=False, width=max(Console().width, 160))
    for item in tables(report):
        console.print(item)
    if args.json:
        write_json(report, args.json)


def write_json(obj: dict, path: str) -> None:
    if path == '-':
        print(json.dumps(obj, indent=1))
        return
    with open(path, 'w') as f:
        json.dump(obj, f, indent=1)


if __name__ == '__main__':
    main()
