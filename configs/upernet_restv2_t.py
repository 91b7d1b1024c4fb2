# UperNet + ResTv2-T, ADE20K, 512x512 crops, 160k iterations, 8 GPUs x 2 images.
# Paper (Table 5): 47.3 mIoU (multi-scale + flip), 62.1M params, 977G FLOPs at 2048x512.
_base_ = ['./_base_/upernet_restv2_ade20k.py']

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/restv2_tiny_224.pth')))
