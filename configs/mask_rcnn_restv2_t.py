# Mask R-CNN + FPN, ResTv2-T (Global attention), COCO, 3x multi-scale (paper Table 4).
# Paper: 47.6 box AP / 43.2 mask AP, 49.9M params, 253 GFLOPs at 1280x800.
_base_ = [
    './_base_/mask_rcnn_restv2_fpn.py',
    './_base_/coco_instance_ms_3x_adamw.py',
]

model = dict(
    backbone=dict(
        arch='tiny',
        attn_style='global',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/restv2_tiny_224.pth')))
