# UperNet + ResTv2 on ADE20K, the recipe of the ResTv2 paper's Table 5 (shared by
# configs/upernet_restv2_{t,s,b}.py; the arch, drop path and ImageNet weights are set there,
# and S and B replace the optimizer with the released stage-wise lr decay recipe).
#
# 512x512 crops, 160k iterations, 16 images per batch (8 GPUs x 2), AdamW lr 6e-5,
# weight decay 0.01 (none on norms), 1500-iteration linear warm-up then poly decay (power 1),
# auxiliary FCN head on stage 3 with loss weight 0.4. The heads use SyncBN; mmengine's Runner
# turns it back into plain BN when it runs without a distributed launcher (one CPU or one GPU).
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['restv2_mm'], allow_failed_imports=False)
# Stops a diverging run at its first nan/inf loss with a named error (docs/divergence.md);
# keep it in a custom_hooks list of your own, `custom_hooks = []` turns it off.
custom_hooks = [dict(type='StopOnNonFiniteLossHook')]

crop_size = (512, 512)
# ``size`` pads training batches to the crop; testing feeds whole images of any size.
data_preprocessor = dict(size=crop_size)
num_classes = 150
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type='ResTv2',
        arch='tiny',
        attn_style='global',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/restv2_tiny_224.pth')),
    # UPerHead (512 channels, PPM 1/2/3/6) reads all four stages: 96, 192, 384, 768 channels.
    decode_head=dict(in_channels=[96, 192, 384, 768], channels=512, num_classes=num_classes),
    # FCN on stage 3 (index 2, 384 channels), loss weight 0.4 (from the base).
    auxiliary_head=dict(in_channels=384, in_index=2, num_classes=num_classes),
    test_cfg=dict(mode='whole'))

# AdamW, no weight decay on any normalization layer: the backbone's LayerNorms (blocks, stem,
# patch embeddings, attention sr/up norms, output norms) and the heads' BatchNorms.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0., power=1., by_epoch=False, begin=1500, end=160000),
]

# 8 GPUs x 2 images = 16 per batch. ``auto_scale_lr`` lets ``tools/train.py --auto-scale-lr``
# rescale the lr for another total batch size.
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Multi-scale + flip testing as the paper ran it (mmseg 0.x MultiScaleFlipAug): each ratio
# scales the 2048x512 test scale, keeping the image's aspect ratio, and every scale is also
# flipped. mmseg 1.x's own ADE20K ``tta_pipeline`` multiplies the original image size instead,
# which differs from this for every image whose shorter side is not 512.
tta_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(type='Resize', scale=(int(2048 * r), int(512 * r)), keep_ratio=True)
                for r in tta_ratios
            ],
            [
                dict(type='RandomFlip', prob=0., direction='horizontal'),
                dict(type='RandomFlip', prob=1., direction='horizontal'),
            ],
            # Labels follow the dataset's reduce_zero_label (True for ADE20K).
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ]),
]
tta_model = dict(type='SegTTAModel')
