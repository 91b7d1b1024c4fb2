# UperNet + ResTv2-B, ADE20K, 512x512 crops, 160k iterations, 8 GPUs x 2 images.
# Paper (Table 5): 49.6 mIoU (multi-scale + flip), 87.6M params, 1095G FLOPs at 2048x512.
# Optimizer as the authors' released B config (not the paper's T recipe): AdamW lr 1.5e-4,
# weight decay 0.05, stage-wise lr decay 0.9 (stem and patch embeddings 0.9^5 x lr, stage i's
# blocks 0.9^(5-i), output norms and heads the full lr; no decay on norms and biases).
_base_ = ['./upernet_restv2_t.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/restv2_base_224.pth')))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1.5e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='ResTv2LearningRateDecayOptimizerConstructor',
    # num_layers: ResTv2-B's blocks per stage, as the release passes them (checked at build).
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=(1, 3, 16, 3)))
