"""Convergence: the documented quick-start commands, exactly, must end with a model that learned.

The commands are read from the pages that show them (tests/doc_commands.py): the detection quick
start from README.md, the segmentation one from docs/segmentation.md; the test runs them as
written, plus `--amp` / `--tta` where the pages say to add them.
On a fresh checkout (here: an empty working directory) each tiny config writes its synthetic set,
trains ResTv2-T Mask R-CNN / UperNet from scratch for a few minutes and is tested on held-out
images with the config's own test settings. A wiring mistake (a frozen part, a wrong norm, a
head fed the wrong level) leaves the metrics near zero, far below the thresholds here, which sit
with a margin under what the configs reach (docs/detection.md, docs/segmentation.md: measured).

Slow (about 10 minutes of 2 CPU cores for both); CI runs them.
"""
import json
import os.path as osp
import re

import cv2
import numpy as np
import pytest

from doc_commands import as_subprocess, option_value, quick_start
from subprocess_tools import run, run_tool

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_CONFIG = osp.join(REPO, 'configs', 'mask_rcnn_restv2_t_tiny_coco.py')
SEG_CONFIG = osp.join(REPO, 'configs', 'upernet_restv2_t_tiny_ade20k.py')
# The pages' quick-start commands (train, test, demo), as shlex words.
DET_QUICK_START = quick_start('README.md', 'configs/mask_rcnn_restv2_t_tiny_coco.py')
SEG_QUICK_START = quick_start('docs/segmentation.md', 'configs/upernet_restv2_t_tiny_ade20k.py')
# Thresholds a margin below the measured results (docs): bbox / segm mAP, mIoU in percent.
MIN_BBOX_MAP, MIN_SEGM_MAP, MIN_MIOU, MIN_MIOU_TTA = 0.6, 0.6, 60.0, 60.0
# bf16 autocast (tools/test.py --amp) may differ from fp32 by at most this much.
AMP_MAP_TOLERANCE, AMP_MIOU_TOLERANCE = 0.03, 2.0


def tool(cwd, script, *args):
    """Run tools/<script> with this Python from ``cwd``; the combined output."""
    return run_tool(script, *args, cwd=cwd, timeout=1800)


def documented(cwd, words, *extra):
    """Run a documented command (plus ``extra`` words) from ``cwd``; the combined output."""
    return run(as_subprocess(list(words) + list(extra)), cwd=cwd, timeout=1800)


def trained_checkpoint(cwd, commands):
    """The checkpoint training wrote, which must be the one the documented test command reads."""
    with open(osp.join(cwd, option_value(commands['train'], '--work-dir'), 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    documented_checkpoint = osp.join(cwd, commands['test'][3])
    assert osp.realpath(checkpoint) == osp.realpath(documented_checkpoint), (
        f'training wrote {checkpoint}; the documented test command reads {commands["test"][3]}')
    return checkpoint


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


def demo_draws(cwd, demo_command):
    """Run a documented demo command from ``cwd``; its drawing must show the predictions."""
    documented(cwd, demo_command)
    image = osp.join(cwd, demo_command[2])
    out = osp.join(cwd, option_value(demo_command, '--out'))
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
    output = documented(cwd, DET_QUICK_START['train'])
    # No data step before it: the tiny set was written on the first run, saying where.
    assert 'Writing the tiny coco set of the config to data/tiny_coco/' in output
    assert 'eta:' in output
    checkpoint = trained_checkpoint(cwd, DET_QUICK_START)
    assert osp.basename(checkpoint) == 'epoch_20.pth'
    return cwd, checkpoint


def test_detection_quick_start_learns(detector):
    cwd, _ = detector
    metrics = coco_metrics(documented(cwd, DET_QUICK_START['test']))
    assert metrics['bbox_mAP'] >= MIN_BBOX_MAP and metrics['segm_mAP'] >= MIN_SEGM_MAP, metrics

    amp_metrics = coco_metrics(documented(cwd, DET_QUICK_START['test'], '--amp'))
    for key, value in metrics.items():
        assert abs(amp_metrics[key] - value) <= AMP_MAP_TOLERANCE, (metrics, amp_metrics)


def test_detection_demo_draws_on_a_held_out_image(detector):
    cwd, _ = detector
    with open(osp.join(cwd, 'data', 'tiny_coco', 'annotations', 'instances_val2017.json')) as f:
        held_out = {image['file_name'] for image in json.load(f)['images']}
    assert osp.basename(DET_QUICK_START['demo'][2]) in held_out
    demo_draws(cwd, DET_QUICK_START['demo'])


@pytest.fixture(scope='module')
def segmentor(tmp_path_factory):
    cwd = str(tmp_path_factory.mktemp('quick_start_seg'))
    output = documented(cwd, SEG_QUICK_START['train'])
    assert 'Writing the tiny ade20k set of the config to data/tiny_ade20k' in output
    assert 'eta:' in output
    checkpoint = trained_checkpoint(cwd, SEG_QUICK_START)
    assert osp.basename(checkpoint) == 'iter_120.pth'
    return cwd, checkpoint


def test_segmentation_quick_start_learns(segmentor):
    cwd, _ = segmentor
    num_val = 8
    single = miou(documented(cwd, SEG_QUICK_START['test']), num_val)
    assert single >= MIN_MIOU
    tta = miou(documented(cwd, SEG_QUICK_START['test'], '--tta'), num_val)
    assert tta >= MIN_MIOU_TTA

    amp = miou(documented(cwd, SEG_QUICK_START['test'], '--amp'), num_val)
    assert abs(amp - single) <= AMP_MIOU_TOLERANCE, (single, amp)


def test_segmentation_demo_draws_on_a_held_out_image(segmentor):
    cwd, _ = segmentor
    assert '/validation/' in SEG_QUICK_START['demo'][2]
    demo_draws(cwd, SEG_QUICK_START['demo'])
