"""Train a detector or segmentor with a ResTv2 (or any) config; the mm-standard flags.

    python tools/train.py configs/mask_rcnn_restv2_t.py [--work-dir DIR] [--resume [CKPT]]
        [--amp] [--auto-scale-lr] [--cfg-options k=v ...] [--launcher pytorch]

The config's ``default_scope`` (mmdet or mmseg) decides which library's registries are used.
"""
import argparse
import os

from mmengine.config import DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

import restv2_mm  # noqa: F401  (registers ResTv2, makes --resume work on torch >= 2.6)
from restv2_mm.datasets import ensure_tiny_dataset
from restv2_mm.engine import check_checkpoint_file
from restv2_mm.utils import check_pretrained_weights, load_tool_config
from restv2_mm.utils.launch import setup_cpu_distributed, use_fp32_without_cuda


def parse_args():
    parser = argparse.ArgumentParser(description='Train a detector or segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', help='enable automatic mixed precision')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the real batch size over auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT; with no value, from the newest complete '
                        'checkpoint in the work dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. train_dataloader.batch_size=1')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main():
    args = parse_args()
    cfg, scope = load_tool_config(args.config, args.launcher, args.cfg_options, args.work_dir)

    if args.amp:
        optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if optim_wrapper == 'AmpOptimWrapper':
            print_log('AMP is already enabled in the config.', logger='current')
        else:
            if optim_wrapper != 'OptimWrapper':
                raise ValueError(f'--amp works with OptimWrapper, the config uses {optim_wrapper}')
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'

    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise RuntimeError('--auto-scale-lr needs `auto_scale_lr = dict(base_batch_size=N)` '
                               'in the config')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        # A missing, empty or truncated file is reported now, before datasets are built.
        check_checkpoint_file(args.resume, what='--resume')
        cfg.resume, cfg.load_from = True, args.resume

    # Fail before datasets are built, not after: a missing ImageNet file must never turn into a
    # silent from-scratch run.
    check_pretrained_weights(cfg)
    # A quick-start config's tiny synthetic set is written on its first run.
    ensure_tiny_dataset(cfg)

    # The recipe asks for mixed precision "when a GPU is there": without CUDA, fp32 (logged).
    use_fp32_without_cuda(cfg)
    # `tools/dist_train.sh CONFIG N` on a CPU machine: N gloo processes, DDP without devices.
    setup_cpu_distributed(cfg)

    if scope == 'mmdet':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()

    if 'runner_type' in cfg:
        from mmengine.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    runner.train()
    # A distributed run's process group is released when the interpreter exits, after the
    # runner is gone (restv2_mm.utils.launch.release_process_groups; docs/distributed.md).


if __name__ == '__main__':
    main()
