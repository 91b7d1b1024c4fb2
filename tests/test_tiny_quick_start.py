"""The quick-start configs and their tiny synthetic data sets (fast; the training is in
tests/test_convergence.py).

The tiny configs must stay the full configs at a small scale (same model, heads, optimizer
wrapper, dataset and metric types, test thresholds), the data sets must be learnable from
appearance alone, deterministic and in the real formats, and a missing set is written once.
"""
import json
import os.path as osp

import cv2
import numpy as np
import pytest
from mmengine.config import Config

from restv2_mm.datasets import ensure_tiny_dataset
from restv2_mm.datasets.tiny_ade20k import (OTHER_LABEL, TINY_ADE20K_CLASSES,
                                            make_tiny_ade20k)
from restv2_mm.datasets.tiny_coco import COCO_CATEGORIES, TINY_CATEGORIES, make_tiny_coco

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_FULL = osp.join(REPO, 'configs', 'mask_rcnn_restv2_t.py')
DET_TINY = osp.join(REPO, 'configs', 'mask_rcnn_restv2_t_tiny_coco.py')
SEG_FULL = osp.join(REPO, 'configs', 'upernet_restv2_t.py')
SEG_TINY = osp.join(REPO, 'configs', 'upernet_restv2_t_tiny_ade20k.py')


def without(node: dict, *keys):
    return {k: v for k, v in node.items() if k not in keys}


# ----------------------------------------------------------------------------- configs
def test_tiny_detection_config_is_the_full_config_at_a_small_scale():
    full, tiny = Config.fromfile(DET_FULL), Config.fromfile(DET_TINY)
    # Same backbone (from scratch), neck and heads; only proposal and sample counts shrink.
    assert tiny.model.backbone == dict(full.model.backbone, init_cfg=None)
    for part in ('type', 'data_preprocessor', 'neck', 'rpn_head', 'roi_head'):
        assert tiny.model[part] == full.model[part], part
    assert tiny.model.test_cfg.rcnn == full.model.test_cfg.rcnn  # score_thr 0.05 untouched
    for stage in ('rpn', 'rcnn'):
        assert without(tiny.model.train_cfg[stage], 'sampler') == \
            without(full.model.train_cfg[stage], 'sampler')
        assert tiny.model.train_cfg[stage].sampler.type == full.model.train_cfg[stage].sampler.type
        assert tiny.model.train_cfg[stage].sampler.pos_fraction == \
            full.model.train_cfg[stage].sampler.pos_fraction
    # Same optimizer wrapper (AMP on a GPU, clipping, decay rules); the lr may be higher.
    assert tiny.optim_wrapper.optimizer.lr >= full.optim_wrapper.optimizer.lr
    assert without(tiny.optim_wrapper, 'optimizer') == without(full.optim_wrapper, 'optimizer')
    assert without(tiny.optim_wrapper.optimizer, 'lr') == \
        without(full.optim_wrapper.optimizer, 'lr')
    assert [s.type for s in tiny.param_scheduler] == [s.type for s in full.param_scheduler]
    assert tiny.train_cfg.type == full.train_cfg.type
    # Same data set and metric types and pipeline steps, at 128 px.
    for loader in ('train_dataloader', 'test_dataloader'):
        tiny_set, full_set = tiny[loader].dataset, full[loader].dataset
        assert tiny_set.type == full_set.type == 'CocoDataset'
        assert (tiny_set.ann_file, tiny_set.data_prefix) == (full_set.ann_file,
                                                             full_set.data_prefix)
        assert [t.type for t in tiny_set.pipeline] == [t.type for t in full_set.pipeline]
    crop = tiny.train_dataloader.dataset.pipeline[2]
    assert crop == full.train_dataloader.dataset.pipeline[2]
    assert tiny.test_evaluator.type == 'CocoMetric'
    assert tiny.test_evaluator.metric == full.test_evaluator.metric == ['bbox', 'segm']
    assert tiny.tiny_dataset.kind == 'coco'
    assert tiny.tiny_dataset.data_root == tiny.train_dataloader.dataset.data_root == \
        tiny.test_dataloader.dataset.data_root
    assert tiny.test_evaluator.ann_file.startswith(tiny.tiny_dataset.data_root)
    assert tiny.randomness.seed == 0


def test_tiny_segmentation_config_declares_its_data():
    tiny = Config.fromfile(SEG_TINY)
    assert tiny.tiny_dataset.kind == 'ade20k' and tiny.randomness.seed == 0
    assert tiny.tiny_dataset.data_root == tiny.train_dataloader.dataset.data_root == \
        tiny.test_dataloader.dataset.data_root
    assert tiny.model.backbone.init_cfg is None
    assert tiny.test_evaluator.type == 'IoUMetric'


# ----------------------------------------------------------------------------- tiny COCO
@pytest.fixture(scope='module')
def tiny_coco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('tiny_coco'))
    make_tiny_coco(root, num_train=6, num_val=3, seed=0)
    return root


def test_tiny_coco_classes_are_decided_by_appearance(tiny_coco):
    names = {cid: name for cid, name, _ in COCO_CATEGORIES}
    colour_of = {cid: np.array(colour) for cid, _, colour in TINY_CATEGORIES.values()}
    ids = {}
    for split in ('train', 'val'):
        with open(osp.join(tiny_coco, 'annotations', f'instances_{split}2017.json')) as f:
            coco = json.load(f)
        # All 80 real categories (non-contiguous ids) are listed, four are drawn.
        assert [c['id'] for c in coco['categories']] == [c[0] for c in COCO_CATEGORIES]
        assert len(coco['categories']) == 80
        ids[split] = {image['id'] for image in coco['images']}
        files = {image['id']: image['file_name'] for image in coco['images']}
        assert coco['annotations']
        for ann in coco['annotations']:
            assert names[ann['category_id']] in TINY_CATEGORIES
            polygon = np.array(ann['segmentation'][0]).reshape(-1, 2)
            assert len(polygon) >= 4 and ann['iscrowd'] == 0 and ann['area'] > 0
            x, y, w, h = ann['bbox']
            assert np.allclose(polygon.min(0), (x, y), atol=0.02)
            image = cv2.imread(osp.join(tiny_coco, f'{split}2017', files[ann['image_id']]))
            mask = np.zeros(image.shape[:2], np.uint8)
            cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
            inside = cv2.erode(mask, np.ones((5, 5), np.uint8)).astype(bool)
            mean_rgb = image[inside][:, ::-1].mean(axis=0)
            # The mean colour inside the mask names the class.
            nearest = min(colour_of, key=lambda c: np.abs(colour_of[c] - mean_rgb).sum())
            assert nearest == ann['category_id']
    assert not ids['train'] & ids['val']  # the val split is held out


def test_tiny_coco_is_deterministic(tiny_coco, tmp_path):
    make_tiny_coco(str(tmp_path), num_train=6, num_val=3, seed=0)
    for path in ('annotations/instances_val2017.json', 'train2017/000000000002.jpg'):
        with open(osp.join(tiny_coco, path), 'rb') as a, open(tmp_path / path, 'rb') as b:
            assert a.read() == b.read(), path


def test_tiny_coco_reads_as_coco_dataset(tiny_coco):
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(DET_TINY)
    dataset_cfg = cfg.train_dataloader.dataset
    dataset_cfg.data_root = tiny_coco + '/'
    dataset = DATASETS.build(dataset_cfg)
    assert len(dataset) == 6 and len(dataset.metainfo['classes']) == 80
    sample = dataset[0]['data_samples']
    assert len(sample.gt_instances) >= 1 and sample.gt_instances.masks.masks.any()


# ----------------------------------------------------------------------------- tiny ADE20K
def test_tiny_ade20k_classes_are_decided_by_appearance(tmp_path):
    make_tiny_ade20k(str(tmp_path), num_train=4, num_val=2, seed=0)
    colours = {value: np.array(colour) for value, (_, colour, _) in TINY_ADE20K_CLASSES.items()}
    for split, name in (('training', 'ADE_train_00000001'), ('validation', 'ADE_val_00000002')):
        image = cv2.imread(str(tmp_path / 'images' / split / (name + '.jpg')))[..., ::-1]
        label = cv2.imread(str(tmp_path / 'annotations' / split / (name + '.png')),
                           cv2.IMREAD_UNCHANGED)
        values = set(np.unique(label).tolist())
        assert OTHER_LABEL in values and values - {OTHER_LABEL} <= set(TINY_ADE20K_CLASSES)
        for value in values - {OTHER_LABEL}:
            mean_rgb = image[label == value].mean(axis=0)
            nearest = min(colours, key=lambda v: np.abs(colours[v] - mean_rgb).sum())
            assert nearest == value, (name, value)


# ----------------------------------------------------------------------------- ensure
def test_ensure_writes_a_missing_set_once_and_checks_an_existing_one(tmp_path):
    data_root = str(tmp_path / 'data' / 'tiny_coco')
    cfg = Config(dict(tiny_dataset=dict(kind='coco', data_root=data_root, num_train=2,
                                        num_val=1, image_size=(64, 64), seed=3),
                      test_dataloader=dict(dataset=dict(data_root=str(tmp_path / 'elsewhere')))))
    # The data loaders read another folder (--cfg-options): nothing to write.
    assert ensure_tiny_dataset(cfg) is None and not tmp_path.joinpath('data').exists()
    cfg.test_dataloader.dataset.data_root = data_root + '/'
    assert ensure_tiny_dataset(cfg) == data_root
    assert osp.isfile(osp.join(data_root, 'annotations', 'instances_val2017.json'))
    with open(osp.join(data_root, 'tiny_dataset.json')) as f:
        assert json.load(f) == dict(kind='coco', num_train=2, num_val=1, image_size=[64, 64],
                                    seed=3)
    assert not [p for p in tmp_path.joinpath('data').iterdir() if p.name.startswith('.tiny')]
    stamp = osp.getmtime(osp.join(data_root, 'annotations', 'instances_val2017.json'))
    ensure_tiny_dataset(cfg)  # present: left alone
    assert osp.getmtime(osp.join(data_root, 'annotations', 'instances_val2017.json')) == stamp

    # A set written with other arguments is refused, naming the regeneration command.
    cfg.tiny_dataset.seed = 4
    with pytest.raises(RuntimeError, match='tools/make_tiny_coco.py .* --seed 4'):
        ensure_tiny_dataset(cfg)
    with pytest.raises(ValueError, match="one of \\['ade20k', 'coco'\\]"):
        ensure_tiny_dataset(Config(dict(tiny_dataset=dict(kind='voc', data_root=data_root),
                                        test_dataloader=cfg.test_dataloader)))
    assert ensure_tiny_dataset(Config(dict(model=dict()))) is None
