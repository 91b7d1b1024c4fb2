# RetinaNet + FPN with a ResTv2 backbone: MMDetection's own RetinaNet
# (`mmdet::_base_/models/retinanet_r50_fpn.py`: 9 anchors per place, focal loss, 80 classes)
# with the backbone swapped.
#
# RetinaNet reads P3-P7: FPN levels from stride 8 (stage 2) up, plus two extra stride-2 convs
# on the backbone's last map (`add_extra_convs='on_input'`, so P6 comes from C5, not from P5).
# As in mmdet's Swin RetinaNet, the backbone returns only stages 2-4 and FPN starts at its first
# input (start_level=0) instead of returning stage 1 and skipping it with start_level=1 (mmdet's
# R-50 / PVT way): same P3-P7 and FLOPs, but stage 1's output LayerNorm, which FPN would never
# read, is not built, so every parameter gets a gradient (DDP needs no
# find_unused_parameters).
_base_ = ['mmdet::_base_/models/retinanet_r50_fpn.py']

custom_imports = dict(imports=['restv2_mm'], allow_failed_imports=False)
# Stops a diverging run at its first nan/inf loss with a named error (docs/divergence.md);
# keep it in a custom_hooks list of your own, `custom_hooks = []` turns it off.
custom_hooks = [dict(type='StopOnNonFiniteLossHook')]

model = dict(
    backbone=dict(
        _delete_=True,
        type='ResTv2',
        arch='tiny',
        attn_style='global',
        out_indices=(1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/restv2_tiny_224.pth')),
    neck=dict(
        in_channels=[192, 384, 768],
        start_level=0,
        add_extra_convs='on_input',
        num_outs=5))
