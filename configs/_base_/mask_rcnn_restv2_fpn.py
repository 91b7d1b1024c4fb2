# Mask R-CNN + FPN with a ResTv2 backbone: MMDetection's own R50 model with the backbone swapped.
# The FPN and heads are mmdet's standard ones (80 COCO classes), as in the paper's Table 4.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']

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
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        # Official ImageNet weights (any of their layouts) or a copy written by
        # tools/convert_official.py. tools/train.py stops at once when the file is missing.
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/restv2_tiny_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
