# Quick start: UperNet + ResTv2-T on a tiny synthetic ADE20K, from scratch on a CPU.
#     python tools/train.py configs/upernet_restv2_t_tiny_ade20k.py
# writes the set to data/tiny_ade20k first when it is not there (the `tiny_dataset` entry below;
# `python tools/make_tiny_ade20k.py data/tiny_ade20k` writes the same files), trains for a few
# minutes and ends with a held-out mIoU well above chance (single-scale and with --tta).
#
# Everything of configs/upernet_restv2_t.py (ResTv2-T, UPerHead + FCN auxiliary head, the
# AdamW optimizer wrapper, ADE20KDataset, IoUMetric, SegTTAModel) at a quarter of the image
# scale: 128x128 crops, single-scale test at 512x128 and multi-scale + flip test at ratios
# 0.5-1.75 of 512x128 (the paper's 2048x512 costs minutes per image on a CPU); a short
# schedule with a higher lr since there are no ImageNet weights; no validation while training.
_base_ = ['./upernet_restv2_t.py']

data_root = 'data/tiny_ade20k'
# Read by restv2_mm.datasets.ensure_tiny_dataset (tools/train.py, test.py, demo.py): writes
# the set to data_root when it is missing. The arguments of make_tiny_ade20k.
tiny_dataset = dict(kind='ade20k', data_root=data_root, num_train=32, num_val=8, seed=0)
crop_size = (128, 128)
test_scale = (512, 128)
max_iters = 120
randomness = dict(seed=0, deterministic=False)

# From scratch: no ImageNet file needed.
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(init_cfg=None))
optim_wrapper = dict(optimizer=dict(lr=6e-4))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=test_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=test_scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
# The base config's tta_pipeline with 512x128 in place of 2048x512.
tta_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(type='Resize', scale=(int(test_scale[0] * r), int(test_scale[1] * r)),
                     keep_ratio=True) for r in tta_ratios
            ],
            [
                dict(type='RandomFlip', prob=0., direction='horizontal'),
                dict(type='RandomFlip', prob=1., direction='horizontal'),
            ],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ]),
]

# Two cores: load in the main process.
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
# tools/test.py evaluates; training only trains.
val_dataloader = None
val_evaluator = None
val_cfg = None

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=0., power=1., by_epoch=False, begin=20, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters))
