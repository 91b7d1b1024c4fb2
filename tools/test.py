"""Test (and evaluate) a detector or segmentor checkpoint; the mm-standard flags.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE_OR_DIR] [--show-dir DIR]
        [--tta] [--amp] [--cfg-options k=v ...] [--launcher pytorch]

Detection: ``--out results.pkl`` dumps the predictions. Segmentation: ``--out DIR`` writes the
predicted label maps. ``--tta`` swaps in the config's ``tta_model`` and ``tta_pipeline`` (for
ADE20K: ratios 0.5-1.75 of 2048x512, each flipped). ``--amp`` runs the model under autocast
(bfloat16 on CPU, float16 on CUDA; restv2_mm.utils.amp: NMS, RoIAlign and the heads'
post-processing stay in float32) and prints the dtype it uses.
"""
import argparse
import os
import os.path as osp

from mmengine.config import DictAction
from mmengine.runner import Runner

import restv2_mm  # noqa: F401
from restv2_mm.datasets import ensure_tiny_dataset
from restv2_mm.utils import load_tool_config
from restv2_mm.utils.launch import setup_cpu_distributed


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', help='detection: a .pkl to dump predictions to; '
                        'segmentation: a directory for the predicted label maps')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory to save drawn predictions in')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds between --show images')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation from the config')
    parser.add_argument('--amp', action='store_true',
                        help='mixed-precision inference: autocast in bfloat16 (CPU) / float16 (CUDA)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def enable_visualization(cfg, args, scope):
    if 'visualization' not in cfg.default_hooks:
        raise RuntimeError('--show/--show-dir need a `visualization` hook in default_hooks')
    hook = cfg.default_hooks.visualization
    hook.draw = True
    if args.show:
        hook.show = True
        hook.wait_time = args.wait_time
    if args.show_dir:
        if scope == 'mmdet':
            hook.test_out_dir = args.show_dir
        else:
            cfg.visualizer.save_dir = args.show_dir


def main():
    args = parse_args()
    cfg, scope = load_tool_config(args.config, args.launcher, args.cfg_options, args.work_dir)
    # A quick-start config's tiny synthetic set is written on its first run.
    ensure_tiny_dataset(cfg)
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
    cfg.load_from = args.checkpoint
    # The checkpoint holds every weight: the ImageNet file is not needed to test.
    if isinstance(cfg.model.get('backbone'), dict):
        cfg.model.backbone.init_cfg = None

    if args.show or args.show_dir:
        enable_visualization(cfg, args, scope)

    if args.tta:
        missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
        if missing:
            raise RuntimeError(f'--tta needs {" and ".join(missing)} in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model

    if scope == 'mmseg' and args.out is not None:
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True

    # `tools/dist_test.sh` on a CPU machine: gloo processes, DDP without devices.
    setup_cpu_distributed(cfg)

    runner = Runner.from_cfg(cfg)
    if args.amp:
        from restv2_mm.utils.amp import describe_amp, enable_amp_inference, model_device_type
        enable_amp_inference(runner.model)
        runner.logger.info(describe_amp(model_device_type(runner.model)))
    if scope == 'mmdet' and args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError('--out for detection must be a .pkl or .pickle file')
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    runner.test()
    # A distributed run's process group is released when the interpreter exits, after the
    # runner is gone (restv2_mm.utils.launch.release_process_groups; docs/distributed.md).


if __name__ == '__main__':
    main()
