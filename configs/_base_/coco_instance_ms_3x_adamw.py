# The released ResTv2 detection recipe: COCO instances, 3x = 36 epochs (steps at 27 and 33),
# multi-scale training (shorter side 480-800 in steps of 32, longer side at most 1333),
# AdamW lr 1e-4 / weight decay 0.05 (none on norms and PA), 16 images per batch, AMP.
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    # Index 2 (quick start overrides `train_dataloader.dataset.pipeline.2.scales`).
    dict(type='RandomChoiceResize',
         scales=[(1333, short) for short in range(480, 801, 32)],
         keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
# 8 GPUs x 2 images = 16 per batch (auto_scale_lr.base_batch_size of the 1x base is 16).
train_dataloader = dict(batch_size=2, num_workers=2, dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1),
]

# Mixed precision as released. Without CUDA, tools/train.py switches to fp32 OptimWrapper
# (mmengine's AmpOptimWrapper needs a GPU) and logs a warning.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # No decay on LayerNorm/BatchNorm weights and biases, nor on the pixel-attention convs.
    paramwise_cfg=dict(norm_decay_mult=0., custom_keys={'pa_conv': dict(decay_mult=0.)}))

auto_scale_lr = dict(enable=False, base_batch_size=16)
