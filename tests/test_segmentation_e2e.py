"""End to end, the segmentation quick start (docs/segmentation.md) and Table 5's FLOPs (slow: minutes on a CPU).

tools/make_tiny_ade20k.py -> tools/train.py (a few iterations) -> tools/test.py single-scale and
--tta, each printing mIoU, all on the real configs, registries, ADE20KDataset and IoUMetric.
"""
import glob
import json
import os.path as osp
import re

import cv2
import pytest

from subprocess_tools import run_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICK_START = 'configs/upernet_restv2_t_tiny_ade20k.py'
MIOU = re.compile(r'Iter\(test\) \[(\d+)/(\d+)\].*?mIoU: ([0-9.]+)')

pytestmark = pytest.mark.slow


def printed_miou(output, num_images):
    found = MIOU.findall(output)
    assert found, f'no mIoU printed:\n{output[-3000:]}'
    done, total, miou = found[-1]
    assert int(done) == int(total) == num_images
    miou = float(miou)
    assert 0.0 <= miou <= 100.0
    return miou


def test_quick_start_train_then_test_single_scale_and_tta(tmp_path):
    data_root, work_dir = str(tmp_path / 'tiny_ade20k'), str(tmp_path / 'work')
    num_val = 2
    run_tool('make_tiny_ade20k.py', data_root, '--num-train', '4', '--num-val', str(num_val))
    # The config's own tiny set is not used (the tools would write it to data/tiny_ade20k).
    data = [f'tiny_dataset.data_root={data_root}',
            f'train_dataloader.dataset.data_root={data_root}',
            f'test_dataloader.dataset.data_root={data_root}']

    # Train: the quick start, cut to 3 iterations.
    log = run_tool('train.py', QUICK_START, '--work-dir', work_dir, '--cfg-options', *data,
                   'train_cfg.max_iters=3', 'default_hooks.logger.interval=1')
    # One CPU process: the heads' SyncBN must have become BN, not failed.
    assert 'SyncBatchNorm (SyncBN) layers in the model will be automatically reverted' in log
    assert 'Writing the tiny' not in log  # the set written by the tool above is used
    losses = [float(x) for x in re.findall(r'Iter\(train\) \[\s*\d+/3\].*?\sloss: ([0-9.]+)', log)]
    assert len(losses) == 3, log[-3000:]
    checkpoint = osp.join(work_dir, 'iter_3.pth')
    assert osp.isfile(checkpoint)

    # Single-scale test, whole images; predictions written at each image's own size.
    pred_dir = str(tmp_path / 'pred')
    log = run_tool('test.py', QUICK_START, checkpoint, '--work-dir', work_dir,
                   '--out', pred_dir, '--cfg-options', *data)
    printed_miou(log, num_val)
    preds = sorted(glob.glob(osp.join(pred_dir, '*.png')))
    assert len(preds) == num_val
    for pred in preds:
        name = osp.splitext(osp.basename(pred))[0]
        image = cv2.imread(osp.join(data_root, 'images', 'validation', name + '.jpg'))
        label = cv2.imread(pred, cv2.IMREAD_UNCHANGED)
        assert label.shape == image.shape[:2] and image.shape[0] % 32 and image.shape[1] % 32

    # Multi-scale + flip test: 6 scales x 2 flips per image through SegTTAModel.
    log = run_tool('test.py', QUICK_START, checkpoint, '--work-dir', work_dir, '--tta',
                   '--cfg-options', *data)
    # The config the Runner printed: the model is SegTTAModel wrapping the segmentor.
    assert re.search(r"^model = dict\(\n(?:.*\n){0,2}?\s+module=dict\(", log, re.MULTILINE), \
        'tools/test.py --tta did not wrap the model in the config\'s tta_model'
    printed_miou(log, num_val)


def test_flops_at_2048x512_match_table5():
    # ResTv2-T only (about a minute on 2 cores); S and B measure 1035.7G and 1095.7G, see docs/segmentation.md.
    out = run_tool('get_flops.py', 'configs/upernet_restv2_t.py', '--shape', '512', '2048',
                   '--json')
    result = json.loads([line for line in out.splitlines() if line.startswith('{')][-1])
    # Table 5 counts every operator, the attention matmuls included.
    assert abs(result['total'] / 977e9 - 1) < 0.02, result
    assert result['matmul'] > 0 and abs(result['params'] / 62.1e6 - 1) < 0.005, result
