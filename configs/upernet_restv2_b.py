# UperNet + ResTv2-B, ADE20K, 512x512 crops, 160k iterations, 8 GPUs x 2 images.
# Paper (Table 5): 49.6 mIoU (multi-scale + flip), 87.6M params, 1095G FLOPs at 2048x512.
_base_ = ['./upernet_restv2_t.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/restv2_base_224.pth')))
