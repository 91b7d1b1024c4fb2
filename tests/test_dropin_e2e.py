"""Drop-in configs run by MMSegmentation's and MMDetection's own tools/train.py and test.py.

The configs are the docs' (restv2_mm.utils.dropin.dropin_config_text), written to a file as a
user would keep them; the libraries' own tools (installed with them under ``.mim/tools``) train
them for two iterations on the tiny synthetic sets and test the checkpoint. Only data paths,
sizes, loader workers and iteration counts change on the command line (--cfg-options).

- DeepLabV3+ (the issue's config, inheriting
  ``mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py``), with the ImageNet
  weights given the way the ResTv2 release's segmentation README gives them,
  ``model.pretrained=FILE``: loaded through the deprecated alias, warned about once.
- Faster R-CNN (``mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py``), weights in
  ``backbone.init_cfg``.
"""
import os.path as osp
import re
import sys

import mmdet
import mmseg
import pytest
import torch

from reference_restv2 import random_official_state_dict
from restv2_mm.converters import backbone_state_dict
from restv2_mm.datasets import make_tiny_ade20k, make_tiny_coco
from restv2_mm.utils.dropin import FAMILY_BY_KEY, dropin_config_text
from subprocess_tools import run

pytestmark = pytest.mark.slow


def library_tool(library, script):
    """The tools/train.py or test.py that ships with an installed mm library."""
    path = osp.join(osp.dirname(library.__file__), '.mim', 'tools', script)
    assert osp.isfile(path), f'{path} missing: is {library.__name__} installed with its tools?'
    return path


@pytest.fixture(scope='module')
def imagenet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('imagenet') / 'ResTv2_tiny_224.pth'
    torch.save({'model': random_official_state_dict('tiny', seed=5)}, path)
    return str(path)


def loaded_message(imagenet_file):
    """What ResTv2 logs once it has loaded the file (every backbone tensor, classifier dropped)."""
    count = len(backbone_state_dict(torch.load(imagenet_file, weights_only=True)))
    return f'ResTv2: loaded {count} tensors from {imagenet_file}'


def write_config(tmp_path, key):
    path = tmp_path / f'{key}_restv2_t.py'
    path.write_text(dropin_config_text(FAMILY_BY_KEY[key].base))
    return str(path)


def loader_options(data_root):
    options = []
    for loader in ('train', 'val', 'test'):
        options += [f'{loader}_dataloader.dataset.data_root={data_root}',
                    f'{loader}_dataloader.num_workers=0',
                    f'{loader}_dataloader.persistent_workers=False']
    return options


def train_then_test(library, config, work_dir, options, train_options, checkpoint, loss_pattern):
    """The library's own train.py for two iterations, then its test.py on ``checkpoint``;
    returns both logs."""
    train_log = run([sys.executable, library_tool(library, 'train.py'), config,
                     '--work-dir', work_dir, '--cfg-options', *options, *train_options,
                     'default_hooks.logger.interval=1'])
    losses = [float(x) for x in re.findall(loss_pattern, train_log)]
    assert len(losses) == 2 and all(loss > 0 for loss in losses), train_log[-3000:]
    checkpoint = osp.join(work_dir, checkpoint)
    assert osp.isfile(checkpoint)
    test_log = run([sys.executable, library_tool(library, 'test.py'), config, checkpoint,
                    '--work-dir', work_dir, '--cfg-options', *options])
    return train_log, test_log


def test_deeplabv3plus_with_mmseg_tools(tmp_path, imagenet_file):
    config = write_config(tmp_path, 'deeplabv3plus')
    data_root, work_dir = str(tmp_path / 'ade'), str(tmp_path / 'work')
    make_tiny_ade20k(data_root, num_train=4, num_val=2)
    small = [*loader_options(data_root), 'train_dataloader.batch_size=2',
             'train_dataloader.dataset.pipeline.2.scale=(256,128)',
             'train_dataloader.dataset.pipeline.3.crop_size=(128,128)',
             'model.data_preprocessor.size=(128,128)',
             'test_dataloader.dataset.pipeline.1.scale=(256,128)',
             'val_dataloader.dataset.pipeline.1.scale=(256,128)']
    # The release's way: `--options model.pretrained=ResTv2_tiny_224.pth`.
    weights = ['model.backbone.init_cfg=None', f'model.pretrained={imagenet_file}']
    train_log, test_log = train_then_test(
        mmseg, config, work_dir, small, [*weights, 'train_cfg.max_iters=2'], 'iter_2.pth',
        r'Iter\(train\) \[\s*\d+/2\].*?\sloss: ([0-9.]+)')
    assert train_log.count('is deprecated (as in mmdet/mmseg backbones)') == 1, train_log[-3000:]
    assert loaded_message(imagenet_file) in train_log
    found = re.findall(r'Iter\(test\) \[2/2\].*?mIoU: ([0-9.]+)', test_log)
    assert found and 0 <= float(found[-1]) <= 100, test_log[-3000:]


def test_faster_rcnn_with_mmdet_tools(tmp_path, imagenet_file):
    config = write_config(tmp_path, 'faster_rcnn')
    data_root, work_dir = str(tmp_path / 'coco') + '/', str(tmp_path / 'work')
    make_tiny_coco(data_root, num_train=4, num_val=2, image_size=(160, 128))
    val_ann = data_root + 'annotations/instances_val2017.json'
    small = [*loader_options(data_root), 'train_dataloader.batch_size=2',
             f'val_evaluator.ann_file={val_ann}', f'test_evaluator.ann_file={val_ann}',
             'train_dataloader.dataset.pipeline.2.scale=(160,128)',
             'val_dataloader.dataset.pipeline.1.scale=(160,128)',
             'test_dataloader.dataset.pipeline.1.scale=(160,128)',
             f'model.backbone.init_cfg.checkpoint={imagenet_file}',
             'model.train_cfg.rcnn.sampler.num=64', 'model.test_cfg.rpn.max_per_img=100',
             # an untrained detector scores below mmdet's 0.05: keep its boxes so AP is computed
             'model.test_cfg.rcnn.score_thr=0.0', 'model.test_cfg.rcnn.max_per_img=20']
    train_log, test_log = train_then_test(
        mmdet, config, work_dir, small, ['train_cfg.max_epochs=1', 'train_cfg.val_begin=100'],
        'epoch_1.pth', r'Epoch\(train\)\s+\[1\]\[\s*\d+/2\].*?\bloss: ([0-9.]+)')
    assert loaded_message(imagenet_file) in train_log
    assert re.search(r'coco/bbox_mAP: \d', test_log), test_log[-3000:]
