# Mask R-CNN + FPN, ResTv2-T, paper Table 3 style 'cwin': Win plus a residual depthwise 7x7 conv after the last block of each stage.
# Paper: 44.07 box AP / 40.44 mask AP, 49.96M params, 212.5 GFLOPs (averaged over 1k val images).
# The Global style of the table is configs/mask_rcnn_restv2_t.py.
_base_ = './mask_rcnn_restv2_t.py'

model = dict(backbone=dict(attn_style='cwin', window_size=(64, 32, 16, 8)))
