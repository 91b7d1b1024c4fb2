# RetinaNet + FPN (P3-P7), ResTv2-T, COCO boxes, 3x schedule with multi-scale training.
# Not in the paper (no box AP published); the counterpart of MMDetection's
# retinanet_r50_fpn_ms-640-800-3x_coco.py (mmdet ships no Swin / PVT RetinaNet 3x).
#
# The whole released ResTv2 detection recipe (configs/_base_/coco_instance_ms_3x_adamw.py:
# 36 epochs, lr steps at the release's 210k / 250k iterations, AdamW 1e-4 / wd 0.05, clipping
# at 0.01, AMP, relative 0.9 x 0.9 crop then shorter side 480..800), boxes only: no masks are
# loaded, so the crop clips the boxes to the window instead of recomputing them from masks, and
# the evaluator computes box AP only.
_base_ = [
    './_base_/retinanet_restv2_fpn.py',
    './_base_/coco_instance_ms_3x_adamw.py',
]

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/restv2_tiny_224.pth')))

# The base's train pipeline without masks; same indices (2: crop, 3: resize).
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomCrop', crop_type='relative', crop_size=(0.9, 0.9), allow_negative_crop=True),
    dict(type='RandomChoiceResize',
         scales=[(1333, short) for short in (480, 512, 534, 576, 640, 672, 704, 736, 768, 800)],
         keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric='bbox')
test_evaluator = val_evaluator
