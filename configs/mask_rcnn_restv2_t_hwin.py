# Mask R-CNN + FPN, ResTv2-T, paper Table 3 style 'hwin': Win, but the last block of each stage attends globally.
# Paper: 45.02 box AP / 41.56 mask AP, 49.94M params, 218.9 GFLOPs (averaged over 1k val images).
# The Global style of the table is configs/mask_rcnn_restv2_t.py.
_base_ = './mask_rcnn_restv2_t.py'

model = dict(backbone=dict(attn_style='hwin', window_size=(64, 32, 16, 8)))
