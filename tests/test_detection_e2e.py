"""End to end with the real tools on a tiny synthetic COCO set: train, test, resume, dist.

configs/mask_rcnn_restv2_t_tiny_coco.py (the full config at 128 px, see test_tiny_quick_start.py)
with --cfg-options that make its declared tiny set smaller (4 + 2 images, written by the tools
themselves into a temporary folder) and the runs one or two epochs long.
"""
import os.path as osp
import re
import sys

import pytest
import torch
from mmengine.config import Config

import restv2_mm
from subprocess_tools import launcher_env, run

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs', 'mask_rcnn_restv2_t_tiny_coco.py')
LR = Config.fromfile(CONFIG).optim_wrapper.optimizer.lr
NUM_TRAIN = 4


@pytest.fixture(scope='module')
def tiny_coco(tmp_path_factory):
    """A data root for the tools to write (tools/train.py does on its first run)."""
    return str(tmp_path_factory.mktemp('data') / 'tiny_coco') + '/'


def tiny_options(data_root, max_epochs, batch_size=2):
    return [
        f'tiny_dataset.data_root={data_root}', f'tiny_dataset.num_train={NUM_TRAIN}',
        'tiny_dataset.num_val=2',
        f'train_dataloader.dataset.data_root={data_root}',
        f'test_dataloader.dataset.data_root={data_root}',
        f'test_evaluator.ann_file={data_root}annotations/instances_val2017.json',
        f'train_dataloader.batch_size={batch_size}',
        f'train_cfg.max_epochs={max_epochs}',
        # Warm-up over the first 4 iterations (mmengine's LinearLR: end - 1 steps): it spans
        # the epoch boundary, so a resumed run shows whether the scheduler continued.
        'param_scheduler.0.end=5', 'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=1', 'default_hooks.checkpoint.max_keep_ckpts=2',
        # An untrained detector scores below mmdet's 0.05: keep every box so mAP is computed.
        'model.test_cfg.rcnn.score_thr=0.0', 'model.test_cfg.rcnn.max_per_img=20',
    ]


def train_log_lines(output):
    """(epoch, iter, lr) of each 'Epoch(train) [e][i/n] ... lr: x' line."""
    pattern = re.compile(r'Epoch\(train\)\s+\[(\d+)\]\[\s*(\d+)/\d+\].*?\blr: ([0-9.e+-]+)')
    return [(int(e), int(i), float(lr)) for e, i, lr in pattern.findall(output)]


def optimizer_steps(checkpoint):
    state = restv2_mm.engine.load_local_checkpoint(checkpoint)['optimizer']['state']
    return {int(s['step']) for s in state.values()}


def test_train_test_resume(tiny_coco, tmp_path):
    work_dir = str(tmp_path / 'work')
    iters_per_epoch = NUM_TRAIN // 2

    # 1. Train one epoch.
    out = run([sys.executable, 'tools/train.py', CONFIG, '--work-dir', work_dir,
               '--cfg-options', *tiny_options(tiny_coco, max_epochs=1)])
    lines = train_log_lines(out)
    assert [(e, i) for e, i, _ in lines] == [(1, i) for i in range(1, iters_per_epoch + 1)]
    assert 'eta:' in out
    assert 'training in fp32' in out  # the config's AMP falls back without CUDA, loudly
    epoch1 = osp.join(work_dir, 'epoch_1.pth')
    assert osp.isfile(epoch1)
    assert optimizer_steps(epoch1) == {iters_per_epoch}

    # 2. Test: COCO bbox and segm mAP, predictions dumped.
    preds = str(tmp_path / 'preds.pkl')
    out = run([sys.executable, 'tools/test.py', CONFIG, epoch1, '--work-dir', work_dir,
               '--out', preds, '--cfg-options', *tiny_options(tiny_coco, max_epochs=1)])
    assert 'Evaluating bbox' in out and 'Evaluating segm' in out
    assert re.search(r'coco/bbox_mAP: \d', out), out[-3000:]
    assert re.search(r'coco/segm_mAP: \d', out), out[-3000:]
    assert osp.isfile(preds)

    # 3. Resume (latest checkpoint of the work dir) up to epoch 2.
    out = run([sys.executable, 'tools/train.py', CONFIG, '--work-dir', work_dir, '--resume',
               '--cfg-options', *tiny_options(tiny_coco, max_epochs=2)])
    assert f'resumed epoch: 1, iter: {iters_per_epoch}' in out
    lines = train_log_lines(out)
    assert [(e, i) for e, i, _ in lines] == [(2, i) for i in range(1, iters_per_epoch + 1)]
    # The warm-up continued at global iteration 3 (factor 0.001 + 0.999 * 2/4) instead of
    # starting over at 0.001; the next iteration goes on from there.
    assert lines[0][2] == pytest.approx(LR * (0.001 + 0.999 * 2 / 4), rel=1e-3)
    assert lines[1][2] == pytest.approx(LR * (0.001 + 0.999 * 3 / 4), rel=1e-3)
    epoch2 = osp.join(work_dir, 'epoch_2.pth')
    assert osp.isfile(epoch2)
    checkpoint = restv2_mm.engine.load_local_checkpoint(epoch2)
    assert checkpoint['meta']['epoch'] == 2
    assert checkpoint['meta']['iter'] == 2 * iters_per_epoch
    assert optimizer_steps(epoch2) == {2 * iters_per_epoch}  # AdamW moments carried over
    # Both schedulers (warm-up, lr steps) count iterations.
    assert [s['_global_step'] for s in checkpoint['param_schedulers']] == [
        2 * iters_per_epoch, 2 * iters_per_epoch]

    # The checkpoint mmengine wrote holds nothing beyond the allow-list.
    from test_detection import assert_only_allowed_globals
    assert_only_allowed_globals(epoch2)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (gloo) path')
def test_dist_train_two_cpu_processes(tiny_coco, tmp_path):
    work_dir = str(tmp_path / 'work')
    env = launcher_env()
    out = run(['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', work_dir,
               '--cfg-options', *tiny_options(tiny_coco, max_epochs=1, batch_size=1)], env=env)
    assert 'rank 0 of 2 CPU processes' in out and 'rank 1 of 2 CPU processes' in out
    assert 'Distributed training: True' in out
    # 4 images, 2 processes, 1 image each per step: 2 steps per epoch (1 process: 4).
    lines = train_log_lines(out)
    assert [(e, i) for e, i, _ in lines] == [(1, 1), (1, 2)]
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))

    # The distributed checkpoint tests with tools/dist_test.sh, 2 processes sharing the 2 images.
    out = run(['bash', 'tools/dist_test.sh', CONFIG, osp.join(work_dir, 'epoch_1.pth'), '2',
               '--work-dir', str(tmp_path / 'test'),
               '--cfg-options', *tiny_options(tiny_coco, max_epochs=1)], env=env)
    assert 'rank 0 of 2 CPU processes' in out and 'Distributed training: True' in out
    # [1/1]: each process tested one of the 2 images (one process alone would show [2/2]).
    assert re.search(r'Epoch\(test\) \[1/1\].*coco/bbox_mAP: [-\d.]+.*coco/segm_mAP: [-\d.]+', out)
