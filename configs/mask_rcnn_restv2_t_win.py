# Mask R-CNN + FPN, ResTv2-T, paper Table 3 style 'win': every EMSAv2 inside windows of 64, 32, 16, 8 tokens per stage.
# Paper: 43.95 box AP / 40.42 mask AP, 49.94M params, 205.2 GFLOPs (averaged over 1k val images).
# The Global style of the table is configs/mask_rcnn_restv2_t.py.
_base_ = './mask_rcnn_restv2_t.py'

model = dict(backbone=dict(attn_style='win', window_size=(64, 32, 16, 8)))
