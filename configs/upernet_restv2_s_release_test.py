# UperNet, ResTv2-S: the authors' released MMSegmentation 0.x model, tested as the release did.
# configs/upernet_restv2_s.py's network with the release's resize of every test image to
# multiples of 32 (single scale, and each scale of --tta). Paper (Table 5): 49.2 mIoU with
# multi-scale + flip (--tta) on ADE20K val. For the converted release:
#     python tools/convert_official.py upernet_restv2_s.pth checkpoints/upernet_restv2_s_release.pth
#     python tools/test.py configs/upernet_restv2_s_release_test.py \
#         checkpoints/upernet_restv2_s_release.pth --tta
# See docs/released-models.md.
_base_ = ['./upernet_restv2_s.py', './_base_/ade20k_release_test_pipeline.py']

val_dataloader = dict(dataset=dict(pipeline={{_base_.release_test_pipeline}}))
test_dataloader = val_dataloader
tta_pipeline = {{_base_.release_tta_pipeline}}
