"""A whole mmdet detector as one graph of standard ONNX operators: image in, detections out.

:class:`DetectorGraph` wraps a built mmdet detector and recomputes its ``predict`` with its
own modules and weights (backbone, neck, RPN / dense head, RoI extractors, box and mask heads,
anchor generators, box coder) and its ``test_cfg``, but with the per-image Python of mmdet's
post-processing (``InstanceData`` slicing, loops over images, ``if`` on counts) written as
batched tensor code, NMS and RoIAlign through :mod:`restv2_mm.deploy.detection_ops`. Nothing
of mmdet is patched; training and eager inference are untouched.

Supported (clear ``ValueError`` otherwise): two-stage detectors with an ``RPNHead`` and a
``StandardRoIHead`` (Mask R-CNN, Faster R-CNN) or ``CascadeRoIHead`` (Cascade Mask R-CNN), and
single-stage detectors with an anchor-based dense head without score factors (RetinaNet);
``DeltaXYWHBBoxCoder`` boxes, ``nms`` (not soft-NMS), RoIAlign ``avg``.

Inputs:
    ``input``        (B, 3, H, W) float32: images normalised and padded as the model's data
                     preprocessor does (mean / std, BGR -> RGB if configured, zero padding).
    ``image_sizes``  (B, 2) int64: (height, width) of each image inside the padded batch,
                     mmdet's ``img_shape``; boxes are clipped to it. (H, W) for unpadded
                     images.

Outputs, per image the detections of the config's ``test_cfg`` (``max_per_img`` = D slots):
    ``boxes``           (B, D, 4) float32 x1, y1, x2, y2 in input pixels
    ``scores``          (B, D) float32, descending within an image
    ``labels``          (B, D) int64 class index (0-based, the dataset's class order)
    ``num_detections``  (B, ) int64: slots ``[:num_detections[b]]`` of image b are detections
    ``masks``           (B, D, h, w) float32, with a mask head only: each detection's mask
                        probability (sigmoid) for its class in its box at the mask head's
                        size (28 x 28 for Mask R-CNN); Cascade: the mean over the stages.
Padding (slots from ``num_detections`` on): boxes 0, scores 0, labels -1, masks 0.

What mmdet's ``predict(..., rescale=True)`` adds after this, outside the graph (see
:func:`restv2_mm.deploy.detector_check.to_data_samples`): boxes divided by the resize scale,
and masks pasted into the original image (bilinear ``grid_sample`` of the 28 x 28 map into the
box, then ``>= mask_thr_binary``).
"""
import copy
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .detection_ops import MIN_DETECTOR_OPSET, batched_nms_indices, roi_align

INPUT_NAMES = ('input', 'image_sizes')
BOX_OUTPUTS = ('boxes', 'scores', 'labels', 'num_detections')
MASK_OUTPUT = 'masks'


def output_names(with_mask: bool) -> Tuple[str, ...]:
    return BOX_OUTPUTS + ((MASK_OUTPUT, ) if with_mask else ())


def _check_coder(coder, where: str):
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
    if type(coder) is not DeltaXYWHBBoxCoder:
        raise ValueError(f'{where}: box coder {type(coder).__name__} does not export; only '
                         'DeltaXYWHBBoxCoder is supported')


def _nms_settings(cfg, where: str) -> Tuple[float, bool]:
    """(iou_threshold, class_agnostic) of an mmdet ``nms`` test config."""
    nms = cfg.get('nms')
    if nms is None or nms.get('type', 'nms') != 'nms':
        raise ValueError(f"{where}: test_cfg nms {nms!r} does not export; only type='nms' "
                         '(ONNX NonMaxSuppression has no soft-NMS)')
    return float(nms['iou_threshold']), bool(nms.get('class_agnostic', False))


def _max_per_img(cfg, where: str) -> int:
    value = int(cfg.get('max_per_img', -1))
    if value <= 0:
        raise ValueError(f'{where}: test_cfg max_per_img must be positive to export (the '
                         f'number of output slots), got {value}')
    return value


def _decode(coder, priors: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """mmdet's ``delta2bbox`` without clipping: priors (N, 4), deltas (N, k * 4) -> (N, k * 4)."""
    from mmdet.models.task_modules.coders.delta_xywh_bbox_coder import delta2bbox
    return delta2bbox(priors, deltas, coder.means, coder.stds, None, 16 / 1000, coder.clip_border,
                      coder.add_ctr_clamp, coder.ctr_clamp)


def _clip(boxes: torch.Tensor, sizes: torch.Tensor, clip_border: bool = True) -> torch.Tensor:
    """Clip boxes (..., 4) to [0, w] x [0, h], sizes (..., 2) = (h, w) broadcasting to them
    (mmdet's ``clamp_(min=0, max=img_shape)`` with one image size per box)."""
    if not clip_border:
        return boxes
    h, w = sizes[..., 0:1], sizes[..., 1:2]
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), w)
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)


def _topk(scores: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The min(k, N) largest of scores (B, N) (all when k <= 0), with the number taken from the
    graph's shape so that it stays dynamic."""
    n = torch._shape_as_tensor(scores)[1]
    if k > 0:
        n = torch.clamp(n, max=k)
    return scores.topk(n, dim=1)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) rows ``index`` (B, K) -> (B, K, ...)."""
    shape = index.shape + x.shape[2:]
    flat = index.reshape(index.shape + (1, ) * (x.dim() - 2)).expand(shape)
    return torch.gather(x, 1, flat)


def _level_outputs(head, feats) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A dense head (RPN, RetinaNet) on the FPN levels: per level (cls (B, A * k, h, w),
    reg (B, A * 4, h, w), anchors (h * w * A, 4))."""
    cls_scores, bbox_preds = head(feats)
    priors = head.prior_generator.grid_priors([c.shape[-2:] for c in cls_scores],
                                              dtype=cls_scores[0].dtype,
                                              device=cls_scores[0].device)
    return list(zip(cls_scores, bbox_preds, priors))


def _decode_anchors(head, reg: torch.Tensor, anchors: torch.Tensor,
                    index: torch.Tensor) -> torch.Tensor:
    """Unclipped boxes (B, k, 4) that reg (B, A * 4, h, w) predicts for the anchors ``index``
    (B, k) of one level (anchors (h * w * A, 4), mmdet's order)."""
    batch = reg.shape[0]
    deltas = _gather_rows(reg.permute(0, 2, 3, 1).reshape(batch, -1, 4), index)
    decoded = _decode(head.bbox_coder, anchors[index].reshape(-1, 4), deltas.reshape(-1, 4))
    return decoded.reshape(batch, -1, 4)


def selected_to_slots(selected: torch.Tensor, batch, slots: int):
    """NonMaxSuppression's rows (K, 3) ``(image, 0, candidate)`` (grouped by image, best first)
    -> (index (B, slots) int64 candidate per slot, 0 in empty slots; valid (B, slots) bool;
    count (B, ) int64)."""
    image, candidate = selected[:, 0], selected[:, 2]
    count = (image[:, None] == torch.arange(batch)[None, :]).sum(0)  # (B, )
    first = torch.cumsum(count, 0) - count
    slot = torch.arange(slots)[None, :]
    valid = slot < count[:, None]
    num_selected = torch._shape_as_tensor(selected)[0]
    position = torch.where(valid, first[:, None] + slot, num_selected)
    padded = torch.cat([candidate, candidate.new_zeros(1)])  # position K: an empty slot
    return padded[position], valid, count


def extract_roi_features(extractor, feats: Tuple[torch.Tensor], boxes: torch.Tensor,
                         batch_indices: torch.Tensor) -> torch.Tensor:
    """mmdet's ``SingleRoIExtractor`` (its level mapping and RoIAlign layers) for boxes (R, 4)
    of images batch_indices (R, ) -> (R, C, h, w), each RoI pooled from its level only."""
    if type(extractor).__name__ != 'SingleRoIExtractor':
        raise ValueError(f'RoI extractor {type(extractor).__name__} does not export; only '
                         'SingleRoIExtractor is supported')
    feats = feats[:extractor.num_inputs]
    rois = torch.cat([batch_indices[:, None].to(boxes.dtype), boxes], 1)
    num_levels = len(feats)
    if num_levels == 1:
        return roi_align(extractor.roi_layers[0], feats[0], boxes, batch_indices)
    levels = extractor.map_roi_levels(rois, num_levels)  # (R, ) int64
    # Pool each level's RoIs, concatenate level by level, then put every RoI back in place:
    # its position is (RoIs of lower levels) + (its rank within its level).
    one_hot = (levels[:, None] == torch.arange(num_levels)[None, :]).long()  # (R, L)
    per_level = []
    for i in range(num_levels):
        inds = one_hot[:, i].nonzero().squeeze(1)
        per_level.append(roi_align(extractor.roi_layers[i], feats[i], boxes[inds],
                                   batch_indices[inds]))
    count = one_hot.sum(0)
    level_start = torch.cumsum(count, 0) - count
    rank = (torch.cumsum(one_hot, 0) * one_hot).sum(1) - 1
    return torch.cat(per_level)[level_start[levels] + rank]


class DetectorGraph(nn.Module):
    """An mmdet detector's ``predict`` as an exportable module: ``forward(input, image_sizes)``
    -> (boxes, scores, labels, num_detections[, masks]); layouts in the module docstring."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector
        self.two_stage = hasattr(detector, 'roi_head')
        if self.two_stage:
            self._check_two_stage(detector)
        else:
            self._check_single_stage(detector)

    @property
    def with_mask(self) -> bool:
        return self.two_stage and self.detector.roi_head.with_mask

    @property
    def output_names(self) -> Tuple[str, ...]:
        return output_names(self.with_mask)

    @property
    def final_cfg(self):
        head = self.detector.roi_head if self.two_stage else self.detector.bbox_head
        return head.test_cfg

    @property
    def max_detections(self) -> int:
        return _max_per_img(self.final_cfg, 'final')

    # ---- checks: what exports, said before tracing ----
    def _check_two_stage(self, det):
        from mmdet.models.dense_heads import RPNHead
        from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead
        name = type(det).__name__
        if not isinstance(getattr(det, 'rpn_head', None), RPNHead):
            raise ValueError(f'{name}: only two-stage detectors with an RPNHead export')
        roi_head = det.roi_head
        if type(roi_head) not in (StandardRoIHead, CascadeRoIHead):
            raise ValueError(f'{name}: RoI head {type(roi_head).__name__} does not export; '
                             'supported: StandardRoIHead, CascadeRoIHead')
        if roi_head.with_shared_head:
            raise ValueError(f'{name}: RoI heads with a shared head do not export')
        if not roi_head.with_bbox:
            raise ValueError(f'{name}: a RoI head without a box head does not export')
        _check_coder(det.rpn_head.bbox_coder, 'rpn_head')
        _nms_settings(det.rpn_head.test_cfg, 'rpn')
        _max_per_img(det.rpn_head.test_cfg, 'rpn')
        _nms_settings(roi_head.test_cfg, 'rcnn')
        _max_per_img(roi_head.test_cfg, 'rcnn')
        heads = roi_head.bbox_head if isinstance(roi_head, CascadeRoIHead) else [roi_head.bbox_head]
        for head in heads:
            _check_coder(head.bbox_coder, 'bbox_head')
            if head.custom_cls_channels or head.custom_activation or not head.with_reg:
                raise ValueError(f'{type(head).__name__}: custom classification activations '
                                 'or heads without box regression do not export')

    def _check_single_stage(self, det):
        from mmdet.models.dense_heads import AnchorHead
        name = type(det).__name__
        head = getattr(det, 'bbox_head', None)
        if not isinstance(head, AnchorHead):
            raise ValueError(f'{name}: only anchor-based dense heads (RetinaNet) export among '
                             f'single-stage detectors, got {type(head).__name__}')
        if getattr(head.loss_cls, 'custom_cls_channels', False):
            raise ValueError(f'{name}: custom classification channels do not export')
        _check_coder(head.bbox_coder, 'bbox_head')
        _nms_settings(head.test_cfg, 'test_cfg')
        _max_per_img(head.test_cfg, 'test_cfg')

    # ---- forward ----
    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor):
        sizes = image_sizes.to(images.dtype)  # (B, 2) h, w
        feats = self.detector.extract_feat(images)
        batch = torch._shape_as_tensor(images)[0]
        if not self.two_stage:
            boxes, scores, labels, valid = self._dense_candidates(feats, sizes)
            return self._final_nms(boxes, scores, labels, valid, self.final_cfg, batch)
        proposals, proposal_valid = self._rpn(feats, sizes, batch)
        boxes, scores, labels, valid = self._rcnn_candidates(feats, proposals, proposal_valid,
                                                             sizes)
        outputs = self._final_nms(boxes, scores, labels, valid, self.final_cfg, batch)
        if self.with_mask:
            outputs = outputs + (self._masks(feats, outputs), )
        return outputs

    def _final_nms(self, boxes, scores, labels, valid, cfg, batch):
        """Candidates (B, N, 4), (B, N), (B, N), (B, N) -> the padded detection outputs."""
        iou, class_agnostic = _nms_settings(cfg, 'final')
        slots = _max_per_img(cfg, 'final')
        idxs = torch.zeros_like(labels) if class_agnostic else labels
        selected = batched_nms_indices(boxes, scores, idxs, valid, iou, slots)
        index, slot_valid, count = selected_to_slots(selected, batch, slots)
        keep = slot_valid.to(boxes.dtype)
        det_boxes = _gather_rows(boxes, index) * keep[..., None]
        det_scores = torch.gather(scores, 1, index) * keep
        det_labels = torch.where(slot_valid, torch.gather(labels, 1, index),
                                 torch.full_like(index, -1))
        return det_boxes, det_scores, det_labels, count

    # ---- single stage ----
    def _dense_candidates(self, feats, sizes):
        """RetinaNet's per-level top-k of (anchor, class) scores, decoded and clipped, as NMS
        candidates: boxes (B, N, 4), scores (B, N), labels (B, N), valid (B, N)."""
        head = self.detector.bbox_head
        cfg = head.test_cfg
        num_classes = head.num_classes
        score_thr = float(cfg.get('score_thr', 0))
        boxes, scores, labels = [], [], []
        for cls, reg, level_priors in _level_outputs(head, feats):
            batch = cls.shape[0]
            logits = cls.permute(0, 2, 3, 1).reshape(batch, -1, head.cls_out_channels)
            probs = logits.sigmoid() if head.use_sigmoid_cls else logits.softmax(-1)[..., :-1]
            top, flat = _topk(probs.reshape(batch, -1), int(cfg.get('nms_pre', -1)))
            anchor = torch.div(flat, num_classes, rounding_mode='floor')
            boxes.append(_decode_anchors(head, reg, level_priors, anchor))
            scores.append(top)
            labels.append(flat - anchor * num_classes)
        boxes = _clip(torch.cat(boxes, 1), sizes[:, None], head.bbox_coder.clip_border)
        scores = torch.cat(scores, 1)
        valid = (scores > score_thr) & self._large_enough(boxes, cfg)
        return boxes, scores, torch.cat(labels, 1), valid

    @staticmethod
    def _large_enough(boxes: torch.Tensor, cfg) -> torch.Tensor:
        """mmdet's ``min_bbox_size`` filter (w and h above it; none when it is < 0)."""
        min_size = cfg.get('min_bbox_size', -1)
        if min_size < 0:
            return torch.ones_like(boxes[..., 0], dtype=torch.bool)
        return ((boxes[..., 2] - boxes[..., 0]) > min_size) & \
            ((boxes[..., 3] - boxes[..., 1]) > min_size)

    # ---- two stage ----
    def _rpn(self, feats, sizes, batch):
        """Proposals (B, P, 4) of the RPN (P = rpn max_per_img, best first) and which slots
        hold one (B, P)."""
        head = self.detector.rpn_head
        cfg = head.test_cfg
        boxes, scores, levels = [], [], []
        for level, (cls, reg, level_priors) in enumerate(_level_outputs(head, feats)):
            logits = cls.permute(0, 2, 3, 1)
            if head.use_sigmoid_cls:
                objectness = logits.reshape(cls.shape[0], -1).sigmoid()
            else:
                objectness = logits.reshape(cls.shape[0], -1, 2).softmax(-1)[..., 0]
            top, anchor = _topk(objectness, int(cfg.get('nms_pre', -1)))
            boxes.append(_decode_anchors(head, reg, level_priors, anchor))
            scores.append(top)
            levels.append(torch.full_like(anchor, level))
        boxes = _clip(torch.cat(boxes, 1), sizes[:, None], head.bbox_coder.clip_border)
        scores = torch.cat(scores, 1)
        valid = self._large_enough(boxes, cfg)
        iou, class_agnostic = _nms_settings(cfg, 'rpn')
        slots = _max_per_img(cfg, 'rpn')
        levels = torch.cat(levels, 1)
        idxs = torch.zeros_like(levels) if class_agnostic else levels
        selected = batched_nms_indices(boxes, scores, idxs, valid, iou, slots)
        index, slot_valid, _ = selected_to_slots(selected, batch, slots)
        return _gather_rows(boxes, index), slot_valid

    def _box_stage(self, stage, feats, rois, batch_indices):
        """Box head ``stage`` on rois (R, 4): (cls_score (R, C + 1), bbox_pred (R, 4 or C * 4))."""
        roi_head = self.detector.roi_head
        if hasattr(roi_head, 'num_stages'):
            extractor, head = roi_head.bbox_roi_extractor[stage], roi_head.bbox_head[stage]
        else:
            extractor, head = roi_head.bbox_roi_extractor, roi_head.bbox_head
        return head(extract_roi_features(extractor, feats, rois, batch_indices))

    def _regress(self, head, rois, bbox_pred, roi_sizes, label=None):
        """Decoded, clipped boxes of rois (R, 4): (R, C, 4), or (R, 4) for the ``label`` class
        (a cascade stage's ``regress_by_class``)."""
        if label is not None and not head.reg_class_agnostic:
            bbox_pred = torch.gather(bbox_pred, 1, (label * 4)[:, None] + torch.arange(4)[None])
        boxes = _decode(head.bbox_coder, rois, bbox_pred)
        boxes = boxes.reshape(boxes.shape[0], -1, 4)
        boxes = _clip(boxes, roi_sizes[:, None], head.bbox_coder.clip_border)
        return boxes[:, 0] if label is not None else boxes

    def _rcnn_candidates(self, feats, proposals, proposal_valid, sizes):
        """The box head(s) on the proposals: NMS candidates (B, P * C, ...) in mmdet's
        (RoI, class) order."""
        roi_head = self.detector.roi_head
        batch, slots = proposals.shape[0], proposals.shape[1]
        batch_indices = torch.arange(batch)[:, None].expand(batch, slots).reshape(-1)
        roi_sizes = sizes[batch_indices]
        rois = proposals.reshape(-1, 4)
        num_stages = getattr(roi_head, 'num_stages', 1)
        stage_scores = []
        for stage in range(num_stages):
            cls_score, bbox_pred = self._box_stage(stage, feats, rois, batch_indices)
            stage_scores.append(cls_score)
            if stage < num_stages - 1:  # a cascade stage refines the RoIs by its best class
                label = cls_score[:, :-1].argmax(dim=1)
                rois = self._regress(roi_head.bbox_head[stage], rois, bbox_pred, roi_sizes,
                                     label)
        # The cascade's mean of the stages' logits, computed as mmdet does (a plain Python sum).
        cls_score = sum(stage_scores) / float(num_stages) if num_stages > 1 else stage_scores[0]
        head = roi_head.bbox_head[-1] if num_stages > 1 else roi_head.bbox_head
        num_classes = head.num_classes
        probs = F.softmax(cls_score, dim=-1)[:, :num_classes]
        boxes = self._regress(head, rois, bbox_pred, roi_sizes)
        boxes = boxes.expand(-1, num_classes, 4)  # class-agnostic regression: one box
        cfg = roi_head.test_cfg
        scores = probs.reshape(batch, -1)
        labels = torch.arange(num_classes)[None, :].expand(batch, slots, num_classes)
        valid = (scores > float(cfg.get('score_thr', 0))) & \
            proposal_valid[..., None].expand(batch, slots, num_classes).reshape(batch, -1)
        return boxes.reshape(batch, -1, 4), scores, labels.reshape(batch, -1), valid

    def _masks(self, feats, outputs):
        """Mask probabilities (B, D, h, w) of the detections' own classes (0 in empty slots)."""
        det_boxes, _, det_labels, count = outputs
        roi_head = self.detector.roi_head
        slot_valid = det_labels >= 0
        where = slot_valid.nonzero()  # (M, 2): image, slot
        image, slot = where[:, 0], where[:, 1]
        # One all-zero RoI after the M detections, so that the mask head never sees 0 RoIs.
        boxes = torch.cat([det_boxes[image, slot], det_boxes.new_zeros(1, 4)])
        labels = torch.cat([det_labels[image, slot], det_labels.new_zeros(1)])
        image = torch.cat([image, image.new_zeros(1)])
        if hasattr(roi_head, 'num_stages'):
            stages = list(zip(roi_head.mask_roi_extractor, roi_head.mask_head))
        else:
            stages = [(roi_head.mask_roi_extractor, roi_head.mask_head)]
        stage_probs = []
        for extractor, head in stages:
            logits = head(extract_roi_features(extractor, feats, boxes, image))
            channel = torch.zeros_like(labels) if head.class_agnostic else labels
            index = channel[:, None, None, None].expand(-1, 1, *logits.shape[2:])
            stage_probs.append(torch.gather(logits, 1, index)[:, 0].sigmoid())
        # mmdet's merge_aug_masks: the mean of the stages' probabilities.
        probs = torch.stack(stage_probs).mean(0) if len(stage_probs) > 1 else stage_probs[0]
        num_masks = torch._shape_as_tensor(where)[0]
        first = torch.cumsum(count, 0) - count
        slot_index = torch.arange(det_labels.shape[1])[None, :]
        position = torch.where(slot_valid, first[:, None] + slot_index, num_masks)
        return probs[position] * slot_valid[..., None, None].to(probs.dtype)


def roi_head_stages(detector) -> List[str]:
    """The heads of ``detector`` the graph contains, by class name (for logs)."""
    if not hasattr(detector, 'roi_head'):
        return [type(detector.bbox_head).__name__]

    def last(head):  # a cascade has one head per stage
        return head[-1] if isinstance(head, nn.ModuleList) else head

    roi_head = detector.roi_head
    heads = [type(detector.rpn_head).__name__, type(roi_head).__name__,
             type(last(roi_head.bbox_head)).__name__]
    if roi_head.with_mask:
        heads.append(type(last(roi_head.mask_head)).__name__)
    return heads


def check_detector_opset(opset: int) -> int:
    """``opset`` if a whole detector can be written with it (RoiAlign ``half_pixel`` needs 16)."""
    from .onnx import MAX_OPSET, check_opset
    check_opset(opset)
    if opset < MIN_DETECTOR_OPSET:
        raise ValueError(f'a whole detector needs opset >= {MIN_DETECTOR_OPSET} (RoiAlign with '
                         f"coordinate_transformation_mode 'half_pixel', mmcv's aligned=True), "
                         f'got {opset}; choose {MIN_DETECTOR_OPSET}..{MAX_OPSET}')
    return opset


def exportable_detector(detector: nn.Module) -> DetectorGraph:
    """:class:`DetectorGraph` over an eval-mode copy of ``detector`` with SyncBN turned into BN
    (``detector`` itself is left as it is)."""
    from mmengine.model import revert_sync_batchnorm

    from .onnx import make_pooling_exportable
    graph = DetectorGraph(make_pooling_exportable(revert_sync_batchnorm(copy.deepcopy(detector))))
    graph.eval()
    return graph


def export_detector(detector: nn.Module, path: str, shape: Tuple[int, int] = (320, 320),
                    opset: int = 17, dynamic: bool = True, batch: int = 1) -> DetectorGraph:
    """Export the whole mmdet ``detector`` (see the module docstring for inputs and outputs) to
    ``path``, traced with a ``batch`` x 3 x ``shape`` input; with ``dynamic`` the batch, height
    and width are dynamic axes. Returns the exported :class:`DetectorGraph` (a copy of
    ``detector``), whose eager forward is what the graph computes.

    mmdet's Swin detectors export too, but (as their backbone alone) their graph is only right
    at the traced batch and size: export them with ``dynamic=False``.
    """
    from .onnx import run_exporter

    check_detector_opset(opset)
    if len(shape) != 2 or not all(int(s) > 0 for s in shape):
        raise ValueError(f'shape must be (H, W) with positive sizes, got {shape}')
    graph = exportable_detector(detector)
    h, w = int(shape[0]), int(shape[1])
    images = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([[h, w]] * batch)
    names = graph.output_names
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {'input': {0: 'batch', 2: 'height', 3: 'width'},
                        'image_sizes': {0: 'batch'}}
        dynamic_axes.update({name: {0: 'batch'} for name in names})
    run_exporter(graph, (images, sizes), path, opset, INPUT_NAMES, names, dynamic_axes)
    return graph
