# UperNet + ResTv2-S, ADE20K, 512x512 crops, 160k iterations, 8 GPUs x 2 images.
# Paper (Table 5): 49.2 mIoU (multi-scale + flip), 72.9M params, 1035G FLOPs at 2048x512.
_base_ = ['./upernet_restv2_t.py']

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/restv2_small_224.pth')))
