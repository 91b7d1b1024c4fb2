"""What the divergence checks cost, measured on a real config (numbers in docs/divergence.md).

    python -m restv2_mm.engine.divergence_cost configs/upernet_restv2_t_tiny_ade20k.py \
        [--iters 40] [--cfg-options k=v ...]

Trains the config for ``--iters`` iterations in a temporary work dir (its tiny data set is
written first, as tools/train.py does) with every ``StopOnNonFiniteLossHook.after_train_iter``
call timed, then times the checks a checkpoint goes through: the non-finite scan of the
weights and optimizer state before it is written, next to mmengine's write of the checkpoint
(serialised, written atomically and fsync'ed, as in training), and the scan ``--resume`` makes
of the file, next to loading it; then the annotation checks:
building mmdet's CocoDataset from 10000 annotations (boxes and 32-point polygons) with and
without them, and one 512x683 ADE20K-sized label map next to decoding its PNG. Prints one
table.
"""
import argparse
import statistics
import tempfile
import time


def _timed(method, durations: list):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)
    return timed


def _wall_and_cpu(function, repeats: int = 5) -> tuple:
    """Medians of the wall time and of this process's CPU time of ``function()`` (on a
    shared machine the CPU time is the better guess of the wall time on an idle one)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def measure(config: str, iters: int, cfg_options=None) -> dict:
    import restv2_mm  # noqa: F401
    from mmengine.runner import Runner

    from ..datasets import ensure_tiny_dataset
    from ..utils import load_tool_config
    from ..utils.launch import use_fp32_without_cuda
    from mmengine.runner.checkpoint import save_checkpoint

    from .checkpoint_compat import load_local_checkpoint
    from .divergence import StopOnNonFiniteLossHook
    from .finite_state import file_nonfinite_names, model_and_optimizer_nonfinite_names

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
            save_scan=_wall_and_cpu(lambda: model_and_optimizer_nonfinite_names(
                runner.model, runner.optim_wrapper)),
            save=_wall_and_cpu(lambda: save_checkpoint(checkpoint, f'{work_dir}/copy.pth')),
            resume_scan=_wall_and_cpu(lambda: file_nonfinite_names(path)),
            load=_wall_and_cpu(lambda: load_local_checkpoint(path, map_location='cpu')))


def measure_annotation_checks() -> dict:
    import json

    import cv2
    import numpy as np
    from mmdet.datasets import CocoDataset

    from ..datasets.annotation_checks import check_label_map

    # 1000 images x 10 annotations, each a box and a 32-point polygon (COCO's average is ~24).
    angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    polygon = np.stack([200 + 50 * np.cos(angles), 150 + 50 * np.sin(angles)], 1).ravel()
    images = [dict(id=i, file_name=f'{i}.jpg', width=640, height=480) for i in range(1, 1001)]
    anns = [dict(id=10 * i + k, image_id=i, category_id=1, bbox=[150.0, 100.0, 100.0, 100.0],
                 area=7800.0, segmentation=[polygon.tolist()], iscrowd=0)
            for i in range(1, 1001) for k in range(10)]
    with tempfile.TemporaryDirectory() as directory:
        ann_file = f'{directory}/instances.json'
        with open(ann_file, 'w') as f:
            json.dump(dict(images=images, annotations=anns,
                           categories=[dict(id=1, name='person')]), f)
        build = lambda: CocoDataset(ann_file=ann_file, data_prefix=dict(img=''),  # noqa: E731
                                    pipeline=[])
        checked = _wall_and_cpu(build, repeats=3)
        patched = {name: getattr(CocoDataset, name) for name in ('parse_data_info',
                                                                 'load_data_list')}
        for name, method in patched.items():
            setattr(CocoDataset, name, method.__wrapped__)
        try:
            plain = _wall_and_cpu(build, repeats=3)
        finally:
            for name, method in patched.items():
                setattr(CocoDataset, name, method)
    rng = np.random.default_rng(0)
    label = rng.integers(0, 150, (512, 683), dtype=np.uint8)
    label[rng.random(label.shape) < 0.1] = 255
    png = cv2.imencode('.png', label)[1].tobytes()
    return dict(annotations=len(anns), build_checked=checked, build_plain=plain,
                label_check=_wall_and_cpu(lambda: check_label_map(label, 'l.png', 150, (255,))),
                label_decode=_wall_and_cpu(
                    lambda: cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)))


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
    for what, check, than in (('per checkpoint written', 'save_scan', 'save'),
                              ('per --resume candidate', 'resume_scan', 'load')):
        (check_wall, check_cpu), (than_wall, than_cpu) = result[check], result[than]
        print(f'| {what} | scan {check_wall * 1e3:.0f} ms (CPU {check_cpu * 1e3:.0f} ms) | '
              f'{than} {than_wall * 1e3:.0f} ms (CPU {than_cpu * 1e3:.0f} ms) | '
              f'{check_wall / than_wall:.0%} (CPU {check_cpu / than_cpu:.0%}) |')
    checks = measure_annotation_checks()
    for what, (check, check_key), (than, than_key) in (
            (f"CocoDataset build, {checks['annotations']} annotations with 32-point polygons",
             ('with the checks', 'build_checked'), ('without', 'build_plain')),
            ('per 512x683 label map loaded', ('check', 'label_check'),
             ('PNG decode', 'label_decode'))):
        (check_wall, check_cpu), (than_wall, than_cpu) = checks[check_key], checks[than_key]
        print(f'| {what} | {check} {check_wall * 1e3:.1f} ms (CPU {check_cpu * 1e3:.1f} ms) | '
              f'{than} {than_wall * 1e3:.1f} ms (CPU {than_cpu * 1e3:.1f} ms) | '
              f'{check_wall / than_wall:.1%} (CPU {check_cpu / than_cpu:.1%}) |')


if __name__ == '__main__':
    main()
