# Cascade Mask R-CNN + FPN with a ResTv2 backbone: MMDetection's own cascade model
# (`mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py`: RPN, three box stages at IoU 0.5 / 0.6 /
# 0.7, FCN mask head, 80 COCO classes) with the backbone swapped and the box heads of
# MMDetection's ConvNeXt / Swin cascade 3x configs: 4 shared 3x3 convs (SyncBN) + 1 fc per
# stage, regressing decoded boxes with a GIoU loss (weight 10).
_base_ = ['mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py']

custom_imports = dict(imports=['restv2_mm'], allow_failed_imports=False)
# Stops a diverging run at its first nan/inf loss with a named error (docs/divergence.md);
# keep it in a custom_hooks list of your own, `custom_hooks = []` turns it off.
custom_hooks = [dict(type='StopOnNonFiniteLossHook')]


def _giou_4conv1fc_head(target_stds):
    return dict(
        type='ConvFCBBoxHead',
        num_shared_convs=4,
        num_shared_fcs=1,
        in_channels=256,
        conv_out_channels=256,
        fc_out_channels=1024,
        roi_feat_size=7,
        num_classes=80,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                        target_stds=target_stds),
        reg_class_agnostic=False,
        reg_decoded_bbox=True,
        # SyncBN as mmdet's: 2 images per GPU are too few for per-GPU batch statistics.
        # mmengine's Runner turns it into plain BN in a run without a distributed launcher.
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0))


model = dict(
    backbone=dict(
        _delete_=True,
        type='ResTv2',
        arch='tiny',
        attn_style='global',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/restv2_tiny_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]),
    # The cascade stages' regression targets tighten stage by stage, as in mmdet's base.
    roi_head=dict(bbox_head=[
        _giou_4conv1fc_head([0.1, 0.1, 0.2, 0.2]),
        _giou_4conv1fc_head([0.05, 0.05, 0.1, 0.1]),
        _giou_4conv1fc_head([0.033, 0.033, 0.067, 0.067]),
    ]))
