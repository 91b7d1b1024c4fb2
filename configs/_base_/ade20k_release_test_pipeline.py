# The test-time data pipelines of the authors' MMSegmentation 0.x release (UperNet 512x512 160k,
# Table 5), for evaluating their converted checkpoints
# (configs/upernet_restv2_{t,s,b}_release_test.py).
#
# The release's backbone only runs on sides that are multiples of 32, so its test pipeline
# resized every image twice (its AlignResize): keep-ratio to the 2048x512 scale, then stretched
# (not padded) to the next multiples of 32. MMSegmentation 1.x's ResizeToMultiple does the same
# second step (mmcv.imresize_to_multiple, bilinear). It comes before LoadAnnotations, so the
# ground truth keeps its original size; the predictions are resized back to it, as in 0.x.
release_test_scale = (2048, 512)
release_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=release_test_scale, keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
# Multi-scale + flip (the paper's mIoU): ratios 0.5-1.75 of 2048x512 (keep-ratio), each scale
# aligned to multiples of 32 and also flipped (mmseg 0.x MultiScaleFlipAug with AlignResize).
release_tta_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
release_tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(type='Resize', scale=(int(release_test_scale[0] * r),
                                           int(release_test_scale[1] * r)), keep_ratio=True)
                for r in release_tta_ratios
            ],
            [dict(type='ResizeToMultiple', size_divisor=32)],
            [
                dict(type='RandomFlip', prob=0., direction='horizontal'),
                dict(type='RandomFlip', prob=1., direction='horizontal'),
            ],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ]),
]
