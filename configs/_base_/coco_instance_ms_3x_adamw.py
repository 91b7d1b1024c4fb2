# The released ResTv2 detection recipe (the authors' Detectron2 Mask R-CNN FPN 3x configs, which
# produced Table 4): COCO instances, 36 epochs with lr steps at the release's iterations 210k and
# 250k, a relative 0.9 x 0.9 random crop then multi-scale resize, AdamW lr 1e-4 / weight decay
# 0.05 on everything but norms, full-model gradient clipping at L2 norm 0.01, 16 images per
# batch, AMP.
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]

# Detectron2's ResizeShortestEdge choices of the release; (1333, s) with keep_ratio is the same
# rule: shorter side s unless that makes the longer side exceed 1333.
train_shorter_sides = (480, 512, 534, 576, 640, 672, 704, 736, 768, 800)
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    # Index 2: a random 0.9 x 0.9 window of the image, masks cropped with it. As in Detectron2
    # with masks on, boxes are recomputed from the cropped masks, and an image whose objects
    # all fall outside the window is kept (without objects) rather than replaced.
    dict(type='RandomCrop', crop_type='relative', crop_size=(0.9, 0.9),
         recompute_bbox=True, allow_negative_crop=True),
    # Index 3 (the quick start overrides `train_dataloader.dataset.pipeline.3.scales`).
    dict(type='RandomChoiceResize',
         scales=[(1333, short) for short in train_shorter_sides],
         keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
# 8 GPUs x 2 images = 16 per batch (auto_scale_lr.base_batch_size of the 1x base is 16).
train_dataloader = dict(batch_size=2, num_workers=2, dataset=dict(pipeline=train_pipeline))

# Steps: the release trains 270k iterations of 16 images and drops the lr at iterations 210k and
# 250k. We keep MMDetection's 36-epoch loop (3x) and give the steps in iterations, so at 16
# images per batch they fall after exactly as many images as in the release (COCO epochs 28.6
# and 34.1); epoch milestones cannot express 250k/270k x 36 = 33.3 epochs (mmengine matches
# integer steps only). 36 epochs of COCO's 117k training images are ~264k iterations, so the
# last, lowest-lr phase is ~14k iterations instead of 20k. Scale the milestones with the batch
# size if you change it.
max_epochs = 36
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, by_epoch=False, milestones=[210000, 250000], gamma=0.1),
]

# Mixed precision as released. Without CUDA, tools/train.py switches to fp32 OptimWrapper
# (mmengine's AmpOptimWrapper needs a GPU) and logs a warning.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # Detectron2's full-model clipping: the L2 norm of all gradients together, every step
    # (AmpOptimWrapper unscales the gradients first).
    clip_grad=dict(max_norm=0.01, norm_type=2),
    # Decay on every parameter but the normalization layers' (LayerNorm, BatchNorm weights and
    # biases): the pixel-attention convs and all other biases are decayed, as released.
    paramwise_cfg=dict(norm_decay_mult=0.))

auto_scale_lr = dict(enable=False, base_batch_size=16)
