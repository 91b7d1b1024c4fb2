# The test-time data pipeline of the authors' Detectron2 release (Mask R-CNN FPN 3x, Table 4),
# for evaluating their converted checkpoints (configs/mask_rcnn_restv2_{t,s,b}_release_test.py).
#
# Detectron2 decodes with Pillow (EXIF-transposed, converted to RGB) and resizes the shorter side
# to 800 (the longer side at most 1333; sizes rounded with int(x + 0.5)) with Pillow's bilinear
# filter on the uint8 image. mmdet's default test pipeline decodes with OpenCV and resizes with
# cv2.INTER_LINEAR: the same sizes, slightly different pixels. Normalisation (RGB, ImageNet
# mean/std) and padding to multiples of 32 with zeros are done by the model's data
# preprocessor, as Detectron2 does them. The annotations are loaded after the resize, at the
# original size, which the COCO metric compares the rescaled predictions with.
detectron2_test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow', backend_args=None),
    dict(type='ResizeShortestEdge', scale=800, max_size=1333, backend='pillow',
         interpolation='bilinear'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
