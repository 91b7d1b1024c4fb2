# Quick start: Mask R-CNN + ResTv2-T on a tiny synthetic COCO set, from scratch on a CPU.
#     python tools/train.py configs/mask_rcnn_restv2_t_tiny_coco.py
# writes the set to data/tiny_coco first when it is not there (the `tiny_dataset` entry below;
# `python tools/make_tiny_coco.py data/tiny_coco` writes the same files), trains for a few
# minutes and ends with held-out bbox and segm mAP well above chance.
#
# Everything of configs/mask_rcnn_restv2_t.py (ResTv2-T, FPN, the RPN/RoI/mask heads, the
# optimizer wrapper with AdamW and its decay rules, CocoDataset, CocoMetric bbox+segm, the test
# score threshold) at a small scale: 128x128 images, fewer proposals, a short schedule with a
# higher lr since there are no ImageNet weights, no validation while training.
_base_ = ['./mask_rcnn_restv2_t.py']

data_root = 'data/tiny_coco/'
# Read by restv2_mm.datasets.ensure_tiny_dataset (tools/train.py, test.py, demo.py): writes
# the set to data_root when it is missing. The arguments of make_tiny_coco.
tiny_dataset = dict(kind='coco', data_root=data_root, num_train=64, num_val=16,
                    image_size=(128, 128), seed=0)
image_scale = (128, 128)
randomness = dict(seed=0, deterministic=False)

# From scratch: no ImageNet file needed. Fewer proposals for 128x128 images with <= 3 objects.
model = dict(
    backbone=dict(init_cfg=None),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=300),
        rcnn=dict(sampler=dict(num=32))),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100)))

# The base pipeline (relative 0.9 x 0.9 crop, multi-scale resize, flip) at 128 px.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomCrop', crop_type='relative', crop_size=(0.9, 0.9),
         recompute_bbox=True, allow_negative_crop=True),
    dict(type='RandomChoiceResize',
         scales=[(213, short) for short in (112, 128, 144)],
         keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]

# Two cores: load in the main process.
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
# tools/test.py evaluates; training only trains.
val_dataloader = None
val_evaluator = None
val_cfg = None

# 64 images / 4 per batch = 16 iterations per epoch; lr steps after 75% and 90% of them.
max_epochs = 20
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, by_epoch=False, milestones=[240, 290], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=16),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1))
