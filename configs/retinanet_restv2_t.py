# RetinaNet + FPN (P3-P7), ResTv2-T, COCO boxes, 1x schedule (12 epochs, single scale 1333x800).
# Not in the paper (no box AP published); the counterpart of MMDetection's
# retinanet_swin-t-p4-w7_fpn_1x_coco.py and retinanet_pvtv2-b2_fpn_1x_coco.py.
#
# mmdet's 1x RetinaNet schedule and data (coco_detection, steps at epochs 8 and 11, 1000-iter
# warm-up), with the ResTv2 optimizer of the released detection recipe
# (configs/_base_/coco_instance_ms_3x_adamw.py): AdamW lr 1e-4, weight decay 0.05 on all but
# norms, gradients clipped at total L2 norm 0.01, AMP. mmdet's Swin RetinaNet keeps the R-50
# SGD at lr 0.01 and PVT uses AdamW 1e-4 with weight decay 1e-4; transformer backbones train
# with AdamW, and we keep one optimizer for every ResTv2 detector.
_base_ = [
    './_base_/retinanet_restv2_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/restv2_tiny_224.pth')))

# Without CUDA, tools/train.py switches to fp32 OptimWrapper and logs a warning.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=0.01, norm_type=2),
    paramwise_cfg=dict(norm_decay_mult=0.))

# 8 GPUs x 2 images = 16 per batch.
auto_scale_lr = dict(enable=False, base_batch_size=16)
