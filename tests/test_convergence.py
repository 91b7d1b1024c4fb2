"""Convergence: the README's quick-start commands, exactly, must end with a model that learned.

On a fresh checkout (here: an empty working directory) each tiny config writes its synthetic set,
trains ResTv2-T Mask R-CNN / UperNet from scratch for a few minutes and is tested on held-out
images with the config's own test settings. A wiring mistake (a frozen part, a wrong norm, a
head fed the wrong level) leaves the metrics near zero, far below the thresholds here, which sit
with a margin under what the configs reach (README: bbox / segm mAP and mIoU measured).

Slow (about 10 minutes of 2 CPU cores for both); CI runs them.
"""
import json
import os.path as osp
import re

import cv2
import numpy as np
import pytest

from subprocess_tools import run_tool

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_CONFIG = osp.join(REPO, 'configs', 'mask_rcnn_restv2_t_tiny_coco.py')
SEG_CONFIG = osp.join(REPO, 'configs', 'upernet_restv2_t_tiny_ade20k.py')
# Thresholds a margin below the measured results (README): bbox / segm mAP, mIoU in percent.
MIN_BBOX_MAP, MIN_SEGM_MAP, MIN_MIOU, MIN_MIOU_TTA = 0.6, 0.6, 60.0, 60.0
# bf16 autocast (tools/test.py --amp) may differ from fp32 by at most this much.
AMP_MAP_TOLERANCE, AMP_MIOU_TOLERANCE = 0.03, 2.0
# The whole detector exported to ONNX and run by ONNX Runtime may differ from tools/test.py by
# at most this much (restv2_mm.deploy; docs/deployment-detector.md).
ONNX_MAP_TOLERANCE = 0.01


def tool(cwd, script, *args):
    """Run tools/<script> with this Python from ``cwd``; the combined output."""
    return run_tool(script, *args, cwd=cwd, timeout=1800)


def coco_metrics(output):
    found = {k: float(v) for k, v in re.findall(r'coco/(bbox_mAP|segm_mAP): ([-0-9.]+)', output)}
    assert set(found) == {'bbox_mAP', 'segm_mAP'}, f'no COCO mAP printed:\n{output[-3000:]}'
    return found


def miou(output, num_images):
    found = re.findall(r'Iter\(test\) \[(\d+)/(\d+)\].*?mIoU: ([0-9.]+)', output)
    assert found, f'no mIoU printed:\n{output[-3000:]}'
    done, total, value = found[-1]
    assert int(done) == int(total) == num_images
    return float(value)


def demo_draws(cwd, image, config, checkpoint, out):
    tool(cwd, 'demo.py', image, config, checkpoint, '--out', out)
    drawn, source = cv2.imread(out), cv2.imread(image)
    assert drawn is not None, f'tools/demo.py wrote no image at {out}'
    assert drawn.shape == source.shape
    # The drawing must change the picture: boxes / masks / class colours over it.
    changed = np.abs(drawn.astype(int) - source.astype(int)).max(axis=2) > 40
    assert changed.mean() > 0.02, f'{out} hardly differs from {image}'


@pytest.fixture(scope='module')
def detector(tmp_path_factory):
    """The detection quick start from an empty directory: train, then its checkpoint."""
    cwd = str(tmp_path_factory.mktemp('quick_start_det'))
    output = tool(cwd, 'train.py', DET_CONFIG, '--work-dir', 'work')
    # No data step before it: the tiny set was written on the first run, saying where.
    assert 'Writing the tiny coco set of the config to data/tiny_coco/' in output
    assert 'eta:' in output
    with open(osp.join(cwd, 'work', 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    assert osp.basename(checkpoint) == 'epoch_20.pth'
    return cwd, checkpoint


@pytest.fixture(scope='module')
def detector_metrics(detector):
    """tools/test.py's bbox / segm mAP of the trained quick-start detector."""
    cwd, checkpoint = detector
    return coco_metrics(tool(cwd, 'test.py', DET_CONFIG, checkpoint, '--work-dir', 'work'))


def test_detection_quick_start_learns(detector, detector_metrics):
    cwd, checkpoint = detector
    metrics = detector_metrics
    assert metrics['bbox_mAP'] >= MIN_BBOX_MAP and metrics['segm_mAP'] >= MIN_SEGM_MAP, metrics

    amp_metrics = coco_metrics(tool(cwd, 'test.py', DET_CONFIG, checkpoint, '--work-dir',
                                    'work', '--amp'))
    for key, value in metrics.items():
        assert abs(amp_metrics[key] - value) <= AMP_MAP_TOLERANCE, (metrics, amp_metrics)


def test_detection_demo_draws_on_a_held_out_image(detector, tmp_path):
    cwd, checkpoint = detector
    with open(osp.join(cwd, 'data', 'tiny_coco', 'annotations', 'instances_val2017.json')) as f:
        first = json.load(f)['images'][0]['file_name']
    demo_draws(cwd, osp.join(cwd, 'data', 'tiny_coco', 'val2017', first), DET_CONFIG,
               checkpoint, str(tmp_path / 'demo.png'))


def test_detection_quick_start_onnx_reproduces_map(detector, detector_metrics, tmp_path):
    """The trained detector exported whole (tools/deployment/export_onnx.py, checked against
    PyTorch at another size) and evaluated by ONNX Runtime on the held-out set
    (tools/deployment/test_onnx.py) scores what tools/test.py scores."""
    cwd, checkpoint = detector
    onnx_file = str(tmp_path / 'tiny_coco.onnx')
    export = tool(cwd, 'deployment/export_onnx.py', DET_CONFIG, '--out', onnx_file,
                  '--checkpoint', checkpoint, '--shape', '128', '128')
    assert 'Exported the whole detector' in export and 'ONNX Runtime vs PyTorch' in export
    onnx_metrics = coco_metrics(tool(cwd, 'deployment/test_onnx.py', DET_CONFIG, onnx_file,
                                     '--work-dir', str(tmp_path / 'work')))
    for key, value in detector_metrics.items():
        assert abs(onnx_metrics[key] - value) <= ONNX_MAP_TOLERANCE, \
            (detector_metrics, onnx_metrics)


@pytest.fixture(scope='module')
def segmentor(tmp_path_factory):
    cwd = str(tmp_path_factory.mktemp('quick_start_seg'))
    output = tool(cwd, 'train.py', SEG_CONFIG, '--work-dir', 'work')
    assert 'Writing the tiny ade20k set of the config to data/tiny_ade20k' in output
    assert 'eta:' in output
    with open(osp.join(cwd, 'work', 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    assert osp.basename(checkpoint) == 'iter_120.pth'
    return cwd, checkpoint


def test_segmentation_quick_start_learns(segmentor):
    cwd, checkpoint = segmentor
    num_val = 8
    single = miou(tool(cwd, 'test.py', SEG_CONFIG, checkpoint, '--work-dir', 'work'), num_val)
    assert single >= MIN_MIOU
    tta = miou(tool(cwd, 'test.py', SEG_CONFIG, checkpoint, '--work-dir', 'work', '--tta'),
               num_val)
    assert tta >= MIN_MIOU_TTA

    amp = miou(tool(cwd, 'test.py', SEG_CONFIG, checkpoint, '--work-dir', 'work', '--amp'),
               num_val)
    assert abs(amp - single) <= AMP_MIOU_TOLERANCE, (single, amp)


def test_segmentation_demo_draws_on_a_held_out_image(segmentor, tmp_path):
    cwd, checkpoint = segmentor
    image = osp.join(cwd, 'data', 'tiny_ade20k', 'images', 'validation', 'ADE_val_00000001.jpg')
    demo_draws(cwd, image, SEG_CONFIG, checkpoint, str(tmp_path / 'demo.png'))
