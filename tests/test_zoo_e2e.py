"""End to end with the real tools: Cascade Mask R-CNN-T and RetinaNet-T on the tiny synthetic COCO.

configs/cascade_mask_rcnn_restv2_t.py and configs/retinanet_restv2_t.py run unchanged apart from
--cfg-options that shrink them (tiny images, fewer proposals, no ImageNet file), as in
tests/test_detection_e2e.py: `tools/train.py` for one epoch of 2 iterations, then `tools/test.py`
on the checkpoint, which must report COCO box AP (and mask AP for the cascade).
"""
import os.path as osp
import re
import sys

import pytest

from restv2_mm.datasets.tiny_coco import make_tiny_coco
from subprocess_tools import run

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
IMAGE_SIZE = (160, 128)  # (W, H)
NUM_TRAIN = 4


@pytest.fixture(scope='module')
def tiny_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny_coco')
    make_tiny_coco(str(root), num_train=NUM_TRAIN, num_val=2, image_size=IMAGE_SIZE)
    return str(root) + '/'


def common_options(data_root):
    width, height = IMAGE_SIZE
    val_ann = data_root + 'annotations/instances_val2017.json'
    options = [
        'model.backbone.init_cfg=None',
        f'val_evaluator.ann_file={val_ann}', f'test_evaluator.ann_file={val_ann}',
        f'val_dataloader.dataset.pipeline.1.scale=({width},{height})',
        f'test_dataloader.dataset.pipeline.1.scale=({width},{height})',
        'train_dataloader.batch_size=2', 'train_cfg.max_epochs=1', 'train_cfg.val_begin=100',
        'param_scheduler.0.end=2', 'default_hooks.logger.interval=1',
    ]
    for loader in ('train', 'val', 'test'):
        options += [f'{loader}_dataloader.dataset.data_root={data_root}',
                    f'{loader}_dataloader.num_workers=0',
                    f'{loader}_dataloader.persistent_workers=False']
    return options


# Per config: the train pipeline's resize (index and key) and fewer proposals / boxes kept.
# score_thr 0: an untrained detector scores below mmdet's 0.05; keep its boxes so AP is computed.
CASES = {
    'cascade_mask_rcnn_restv2_t': dict(
        resize='train_dataloader.dataset.pipeline.3.scales=[({w},{h})]',
        metrics=('bbox', 'segm'),
        options=['model.train_cfg.rpn_proposal.nms_pre=200',
                 'model.train_cfg.rpn_proposal.max_per_img=100',
                 *[f'model.train_cfg.rcnn.{stage}.sampler.num=64' for stage in range(3)],
                 'model.test_cfg.rpn.nms_pre=200', 'model.test_cfg.rpn.max_per_img=100',
                 'model.test_cfg.rcnn.score_thr=0.0', 'model.test_cfg.rcnn.max_per_img=20']),
    'retinanet_restv2_t': dict(
        resize='train_dataloader.dataset.pipeline.2.scale=({w},{h})',
        metrics=('bbox', ),
        options=['model.test_cfg.nms_pre=200', 'model.test_cfg.score_thr=0.0',
                 'model.test_cfg.max_per_img=20']),
}


@pytest.mark.parametrize('name', list(CASES))
def test_train_then_test(name, tiny_coco, tmp_path):
    case = CASES[name]
    width, height = IMAGE_SIZE
    options = [*common_options(tiny_coco), case['resize'].format(w=width, h=height),
               *case['options']]
    config = osp.join(REPO, 'configs', f'{name}.py')
    work_dir = str(tmp_path / 'work')

    out = run([sys.executable, 'tools/train.py', config, '--work-dir', work_dir,
               '--cfg-options', *options])
    iterations = re.findall(r'Epoch\(train\)\s+\[1\]\[\s*(\d+)/\d+\].*?\bloss: ([0-9.]+)', out)
    assert [int(i) for i, _ in iterations] == [1, 2], out[-3000:]
    assert all(float(loss) > 0 for _, loss in iterations)
    checkpoint = osp.join(work_dir, 'epoch_1.pth')
    assert osp.isfile(checkpoint)

    out = run([sys.executable, 'tools/test.py', config, checkpoint, '--work-dir', work_dir,
               '--cfg-options', *options])
    for metric in case['metrics']:
        assert f'Evaluating {metric}' in out, out[-3000:]
        assert re.search(rf'coco/{metric}_mAP: \d', out), out[-3000:]
    if 'segm' not in case['metrics']:
        assert 'Evaluating segm' not in out
