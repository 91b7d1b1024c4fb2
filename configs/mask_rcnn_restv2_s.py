# Mask R-CNN + FPN, ResTv2-S, COCO, 3x multi-scale (paper Table 4).
# Paper: 48.1 box AP / 43.3 mask AP, 60.7M params, 290 GFLOPs at 1280x800.
_base_ = './mask_rcnn_restv2_t.py'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='checkpoints/restv2_small_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
