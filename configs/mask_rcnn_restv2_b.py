# Mask R-CNN + FPN, ResTv2-B, COCO, 3x multi-scale (paper Table 4).
# Paper: 48.7 box AP / 43.9 mask AP, 75.5M params, 328 GFLOPs at 1280x800.
_base_ = './mask_rcnn_restv2_t.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='checkpoints/restv2_base_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
