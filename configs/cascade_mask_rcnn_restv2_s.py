# Cascade Mask R-CNN + FPN (4conv1fc GIoU box heads), ResTv2-S, COCO, 3x multi-scale, AMP.
# Not in the paper; recipe and the choices behind it in configs/cascade_mask_rcnn_restv2_t.py.
_base_ = './cascade_mask_rcnn_restv2_t.py'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='checkpoints/restv2_small_224.pth')))
