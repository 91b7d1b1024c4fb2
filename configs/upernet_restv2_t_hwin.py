# UperNet + ResTv2-T, ADE20K, paper Table 3 style 'hwin': Win, but the last block of each stage attends globally.
# The paper measures the styles only with Mask R-CNN (Table 3); no mIoU is published for this
# config. Everything else as configs/upernet_restv2_t.py (the Global style, Table 5).
# Window sizes are the backbone's defaults (tokens per window side, one per stage), as in
# configs/mask_rcnn_restv2_t_hwin.py; at 512x512 crops the stage maps are 128, 64, 32, 16 tokens
# wide, so every stage really splits into 2 x 2 windows.
_base_ = './upernet_restv2_t.py'

model = dict(backbone=dict(attn_style='hwin', window_size=(64, 32, 16, 8)))
