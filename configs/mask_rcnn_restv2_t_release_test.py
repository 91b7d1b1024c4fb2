# Mask R-CNN + FPN, ResTv2-T: the authors' released Detectron2 model, tested as the release did.
# configs/mask_rcnn_restv2_t.py's network with Detectron2's test-time decoding and resizing
# (Pillow). Paper (Table 4): 47.6 box AP / 43.2 mask AP on COCO val2017. For the converted release:
#     python tools/convert_official.py model_final.pth checkpoints/mask_rcnn_restv2_t_release.pth
#     python tools/test.py configs/mask_rcnn_restv2_t_release_test.py \
#         checkpoints/mask_rcnn_restv2_t_release.pth
# See docs/released-models.md.
_base_ = ['./mask_rcnn_restv2_t.py', './_base_/detectron2_test_pipeline.py']

val_dataloader = dict(dataset=dict(pipeline={{_base_.detectron2_test_pipeline}}))
test_dataloader = val_dataloader
