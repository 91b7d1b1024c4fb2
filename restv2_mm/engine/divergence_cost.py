"""What the divergence checks cost, measured on a real config (numbers in docs/divergence.md).

    python -m restv2_mm.engine.divergence_cost configs/upernet_restv2_t_tiny_ade20k.py \
        [--iters 40] [--cfg-options k=v ...]

Trains the config for ``--iters`` iterations in a temporary work dir (its tiny data set is
written first, as tools/train.py does) with every ``StopOnNonFiniteLossHook.after_train_iter``
call timed, then times the checks a checkpoint goes through: the non-finite scan before it is
written (on the in-memory checkpoint dict) and the scan ``--resume`` makes of the file, each
next to what the write and the load themselves take. Prints one table.
"""
import argparse
import statistics
import tempfile
import time

import torch


def _timed(method, durations: list):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)
    return timed


def _median_seconds(function, repeats: int = 5) -> float:
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def measure(config: str, iters: int, cfg_options=None) -> dict:
    import restv2_mm  # noqa: F401
    from mmengine.runner import Runner

    from ..datasets import ensure_tiny_dataset
    from ..utils import load_tool_config
    from ..utils.launch import use_fp32_without_cuda
    from .checkpoint_compat import load_local_checkpoint
    from .divergence import StopOnNonFiniteLossHook
    from .finite_state import checkpoint_nonfinite_names, file_nonfinite_names

    with tempfile.TemporaryDirectory() as work_dir:
        cfg, _ = load_tool_config(config, cfg_options=cfg_options, work_dir=work_dir)
        ensure_tiny_dataset(cfg)
        use_fp32_without_cuda(cfg)
        cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters + 1)
        cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
        cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False,
                                            interval=iters)
        cfg.default_hooks.logger = dict(type='LoggerHook', interval=iters)
        runner = Runner.from_cfg(cfg)
        hooks = [h for h in runner.hooks if isinstance(h, StopOnNonFiniteLossHook)]
        if not hooks:
            raise ValueError(f'{config} has no StopOnNonFiniteLossHook in custom_hooks')
        hook_seconds: list = []
        hooks[0].after_train_iter = _timed(hooks[0].after_train_iter, hook_seconds)
        runner.train()
        iteration_seconds = list(runner.message_hub.get_scalar('train/time').data[0])

        path = f'{work_dir}/iter_{iters}.pth'
        checkpoint = load_local_checkpoint(path, map_location='cpu')
        return dict(
            iterations=len(hook_seconds),
            hook=statistics.median(hook_seconds[1:] or hook_seconds),
            iteration=statistics.median(iteration_seconds[1:] or iteration_seconds),
            save_scan=_median_seconds(lambda: checkpoint_nonfinite_names(checkpoint)),
            save=_median_seconds(lambda: torch.save(checkpoint, f'{work_dir}/copy.pth')),
            resume_scan=_median_seconds(lambda: file_nonfinite_names(path)),
            load=_median_seconds(lambda: load_local_checkpoint(path, map_location='cpu')))


def main(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--iters', type=int, default=40)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    result = measure(args.config, args.iters, args.cfg_options)
    print(f"| per training iteration ({result['iterations']} iterations, medians) | "
          f"hook {result['hook'] * 1e6:.0f} us | iteration {result['iteration'] * 1e3:.0f} ms | "
          f"{result['hook'] / result['iteration']:.2%} |")
    print(f"| per checkpoint written | scan {result['save_scan'] * 1e3:.1f} ms | "
          f"torch.save {result['save'] * 1e3:.1f} ms | "
          f"{result['save_scan'] / result['save']:.1%} |")
    print(f"| per --resume candidate | scan (with its load) {result['resume_scan'] * 1e3:.1f} ms | "
          f"load {result['load'] * 1e3:.1f} ms | {result['resume_scan'] / result['load']:.1%} |")


if __name__ == '__main__':
    main()
