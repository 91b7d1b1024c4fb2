"""NMS and RoIAlign that run mmcv's kernels in PyTorch and export as standard ONNX operators.

mmcv's own ``nms`` / ``RoIAlign`` export as ``mmcv::`` custom ops or through private torch
helpers that torch has removed; these two autograd Functions are used only inside the export
graph of :mod:`restv2_mm.deploy.detector` (training and eager inference never see them):

* :func:`batched_nms_indices` -> ``NonMaxSuppression`` (opset >= 11). In PyTorch it is mmcv's
  ``batched_nms`` per image, the call mmdet's heads make, so the traced and the eager model
  keep the same boxes.
* :func:`roi_align` -> ``RoiAlign`` (opset >= 16) with ``coordinate_transformation_mode``
  ``half_pixel`` for mmcv's ``aligned=True`` (the RoI shifted by half a pixel, no minimum size
  of 1) and ``output_half_pixel`` for ``aligned=False``: ONNX Runtime then samples the same
  points as mmcv's kernel.
"""
from typing import Tuple

import torch

# Scores handed to NonMaxSuppression: candidates carry their score (>= 0, a sigmoid or a
# softmax), everything else (padding, boxes below the score threshold or the minimum size)
# INVALID_SCORE. The operator's score threshold sits between the two.
INVALID_SCORE = -1.0
NMS_SCORE_THRESHOLD = -0.5
# RoiAlign with the half_pixel coordinate mode appeared in opset 16.
MIN_DETECTOR_OPSET = 16


class _BatchedNMS(torch.autograd.Function):
    """See :func:`batched_nms_indices`."""

    @staticmethod
    def forward(ctx, nms_boxes, nms_scores, boxes, scores, idxs, iou_threshold, max_per_image):
        from mmcv.ops import batched_nms

        rows = []
        for b in range(nms_scores.shape[0]):
            candidates = (nms_scores[b, 0] > NMS_SCORE_THRESHOLD).nonzero().squeeze(1)
            if candidates.numel() == 0:
                continue
            _, keep = batched_nms(boxes[b, candidates], scores[b, candidates],
                                  idxs[b, candidates], dict(type='nms',
                                                            iou_threshold=iou_threshold))
            kept = candidates[keep[:max_per_image]]
            rows.append(torch.stack([torch.full_like(kept, b), torch.zeros_like(kept), kept], 1))
        if not rows:
            return nms_scores.new_zeros((0, 3), dtype=torch.long)
        return torch.cat(rows)

    @staticmethod
    def symbolic(g, nms_boxes, nms_scores, boxes, scores, idxs, iou_threshold, max_per_image):
        def const(value, dtype):
            return g.op('Constant', value_t=torch.tensor([value], dtype=dtype))

        return g.op('NonMaxSuppression', nms_boxes, nms_scores, const(max_per_image, torch.long),
                    const(iou_threshold, torch.float32),
                    const(NMS_SCORE_THRESHOLD, torch.float32))


def batched_nms_indices(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                        valid: torch.Tensor, iou_threshold: float,
                        max_per_image: int) -> torch.Tensor:
    """mmcv's ``batched_nms`` (boxes of different ``idxs`` never suppress each other) over the
    ``valid`` candidates of each image, the ``max_per_image`` best kept.

    boxes (B, N, 4) x1y1x2y2, scores (B, N) >= 0, idxs (B, N) int (class or level), valid
    (B, N) bool. Returns (K, 3) int64 rows ``(image, 0, candidate)``, grouped by image and in
    descending score within an image: the ``selected_indices`` of ONNX NonMaxSuppression.

    The class separation is mmcv's: each box is shifted by ``idx * (max + 1)``, ``max`` the
    largest coordinate among the image's valid boxes, so that the operator sees the same
    float32 coordinates as mmcv's kernel does.
    """
    if not 0 <= iou_threshold <= 1:
        raise ValueError(f'NMS iou_threshold must be in [0, 1] for ONNX, got {iou_threshold}')
    if max_per_image <= 0:
        raise ValueError(f'max_per_image must be positive, got {max_per_image}')
    masked = torch.where(valid[..., None], boxes, torch.full_like(boxes, float('-inf')))
    max_coordinate = masked.flatten(1).max(dim=1).values  # (B, )
    max_coordinate = torch.where(torch.isfinite(max_coordinate), max_coordinate,
                                 torch.zeros_like(max_coordinate))
    offsets = idxs.to(boxes.dtype) * (max_coordinate[:, None] + 1)
    nms_boxes = boxes + offsets[..., None]
    nms_scores = torch.where(valid, scores, torch.full_like(scores, INVALID_SCORE))[:, None]
    return _BatchedNMS.apply(nms_boxes, nms_scores, boxes, scores, idxs, float(iou_threshold),
                             int(max_per_image))


class _RoIAlign(torch.autograd.Function):
    """See :func:`roi_align`."""

    @staticmethod
    def forward(ctx, feats, boxes, batch_indices, output_size, spatial_scale, sampling_ratio,
                aligned):
        from mmcv.ops import roi_align as mmcv_roi_align

        rois = torch.cat([batch_indices[:, None].to(boxes.dtype), boxes], 1)
        return mmcv_roi_align(feats, rois, output_size, spatial_scale, sampling_ratio, 'avg',
                              aligned)

    @staticmethod
    def symbolic(g, feats, boxes, batch_indices, output_size, spatial_scale, sampling_ratio,
                 aligned):
        return g.op('RoiAlign', feats, boxes, batch_indices, mode_s='avg',
                    output_height_i=output_size[0], output_width_i=output_size[1],
                    sampling_ratio_i=max(0, sampling_ratio), spatial_scale_f=spatial_scale,
                    coordinate_transformation_mode_s='half_pixel' if aligned
                    else 'output_half_pixel')


def roi_align(layer, feats: torch.Tensor, boxes: torch.Tensor,
              batch_indices: torch.Tensor) -> torch.Tensor:
    """mmcv ``RoIAlign`` module ``layer`` (its settings) on feats (B, C, H, W) for boxes (R, 4)
    x1y1x2y2 in input pixels of images ``batch_indices`` (R, ) int64 -> (R, C, h, w)."""
    if getattr(layer, 'pool_mode', 'avg') != 'avg':
        raise ValueError(f"RoIAlign pool_mode {layer.pool_mode!r}: only 'avg' exports")
    output_size: Tuple[int, int] = tuple(int(s) for s in layer.output_size)
    return _RoIAlign.apply(feats, boxes, batch_indices, output_size, float(layer.spatial_scale),
                           int(layer.sampling_ratio), bool(layer.aligned))
