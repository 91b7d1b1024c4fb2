"""A plain transcription of Detectron2 v0.6's Mask R-CNN FPN inference, on the released layout.

Reads the authors' Detectron2 state dict (``backbone.bottom_up.*``, ``backbone.fpn_*``,
``proposal_generator.*``, ``roi_heads.*``) by its own names and runs the release's inference
with the settings of its configs (Base-RCNN-FPN + D2 defaults), written from
../shared/docs/released-checkpoints.md §1.4 and Detectron2's modules named there:

- backbone: tests/reference_restv2.py's ResTv2, then the output LayerNorms ``norm_{k}.0``
  (channels-first: mean and biased variance over channels, eps 1e-6);
- FPN (``fpn.py``): 1x1 laterals, top-down nearest x2 upsampling and sum, 3x3 outputs, P6 =
  max_pool(k=1, s=2) of P5;
- RPN (``anchor_generator.py``, ``rpn.py``, ``proposal_utils.py``): anchors of size 32 * 2^i on
  P2..P6 with aspect ratios (0.5, 1, 2), offset 0; deltas with weights (1, 1, 1, 1), dw/dh
  clamped above at log(1000/16); per level the 1000 best logits; clip; keep w > 0 and h > 0;
  NMS 0.7 within each level; the 1000 best;
- box head (``poolers.py``, ``box_head.py``, ``fast_rcnn.py``): ROIAlignV2 (aligned, adaptive
  sampling) 7x7 on P2..P5, level floor(4 + log2(sqrt(area) / 224 + 1e-8)) clamped to [2, 5];
  fc1, fc2 with ReLU; softmax over 81 (background last); class-specific deltas with weights
  (10, 10, 5, 5); clip; score > 0.05; per-class NMS 0.5; the 100 best;
- mask head (``mask_head.py``, ``mask_ops.py``): ROIAlignV2 14x14, four 3x3 convs + ReLU,
  2x2 stride-2 deconv + ReLU, 1x1 predictor; the predicted class's sigmoid; pasted with
  ``grid_sample`` inside the box's bounds (+1 pixel) and thresholded at >= 0.5;
- post-processing (``postprocessing.py``): boxes clipped, empty boxes dropped.

Every operation is written out (NMS, ROIAlign, pasting) rather than taken from torchvision or
mmcv, so that the comparison with the converted MMDetection model tests the conventions, not a
shared implementation. The input is one normalised image whose sides are multiples of 32 (as
Detectron2 pads it); its size is the output size.
"""
import math

import torch
import torch.nn.functional as F

from reference_restv2 import reference_forward

BACKBONE = 'backbone.bottom_up.'
SCALE_CLAMP = math.log(1000. / 16)
ANCHOR_SIZES = {level: 32 * 2 ** (level - 2) for level in range(2, 7)}
ASPECT_RATIOS = (0.5, 1., 2.)
RPN_PRE_NMS_TOPK, RPN_POST_NMS_TOPK, RPN_NMS = 1000, 1000, 0.7
SCORE_THRESH, BOX_NMS, DETECTIONS_PER_IMAGE = 0.05, 0.5, 100
BOX_WEIGHTS = (10., 10., 5., 5.)


def conv(sd, name, x, **kwargs):
    return F.conv2d(x, sd[name + '.weight'], sd[name + '.bias'], **kwargs)


def channels_first_layer_norm(x, weight, bias, eps=1e-6):
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    return weight[:, None, None] * ((x - mean) / torch.sqrt(var + eps)) + bias[:, None, None]


def backbone_features(sd, arch, image):
    """res2..res5 of the release's D2 backbone: the ResTv2 stage maps through ``norm_{k}.0``."""
    official = {k[len(BACKBONE):]: v for k, v in sd.items() if k.startswith(BACKBONE)}
    maps = reference_forward(official, arch, image)
    return [channels_first_layer_norm(m, official[f'norm_{k}.0.weight'],
                                      official[f'norm_{k}.0.bias'])
            for k, m in enumerate(maps, start=1)]


def fpn(sd, features):
    """{level: map} for P2..P6 (level = log2 of the stride)."""
    lateral = {k: conv(sd, f'backbone.fpn_lateral{k}', f) for k, f in zip(range(2, 6), features)}
    outputs, prev = {}, lateral[5]
    outputs[5] = conv(sd, 'backbone.fpn_output5', prev, padding=1)
    for k in (4, 3, 2):
        prev = lateral[k] + F.interpolate(prev, scale_factor=2., mode='nearest')
        outputs[k] = conv(sd, f'backbone.fpn_output{k}', prev, padding=1)
    outputs[6] = F.max_pool2d(outputs[5], kernel_size=1, stride=2, padding=0)
    return outputs


def anchors(level, height, width):
    """(H * W * 3, 4) anchors of a level: location-major (rows, then columns), then ratio."""
    stride, size = 2 ** level, ANCHOR_SIZES[level]
    cell = []
    for ratio in ASPECT_RATIOS:
        w = math.sqrt(size * size / ratio)
        h = ratio * w
        cell.append([-w / 2, -h / 2, w / 2, h / 2])
    cell = torch.tensor(cell)
    ys = torch.arange(0, height * stride, stride, dtype=torch.float32)
    xs = torch.arange(0, width * stride, stride, dtype=torch.float32)
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing='ij')
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts[:, None, :] + cell[None]).reshape(-1, 4)


def apply_deltas(deltas, boxes, weights):
    """Box2BoxTransform.apply_deltas: (N, k*4) deltas on (N, 4) boxes -> (N, k*4) boxes."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=SCALE_CLAMP)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=SCALE_CLAMP)
    cx = dx * widths[:, None] + ctr_x[:, None]
    cy = dy * heights[:, None] + ctr_y[:, None]
    w, h = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1
                       ).reshape(deltas.shape)


def clip(boxes, height, width):
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def iou(box, boxes):
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    w = (torch.minimum(box[2], boxes[:, 2]) - torch.maximum(box[0], boxes[:, 0])).clamp(min=0)
    h = (torch.minimum(box[3], boxes[:, 3]) - torch.maximum(box[1], boxes[:, 1])).clamp(min=0)
    inter = w * h
    return inter / (area + areas - inter)


def nms(boxes, scores, threshold):
    """Greedy NMS: indices kept, best score first."""
    order = torch.argsort(scores, descending=True)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou(boxes[i], boxes) > threshold
    return torch.tensor(keep, dtype=torch.long)


def batched_nms(boxes, scores, groups, threshold):
    """NMS within each group; all kept indices, best score first."""
    keep = torch.cat([torch.nonzero(groups == g)[:, 0][nms(boxes[groups == g], scores[groups == g],
                                                            threshold)]
                      for g in torch.unique(groups)] or [torch.zeros(0, dtype=torch.long)])
    return keep[torch.argsort(scores[keep], descending=True)]


def rpn(sd, levels, height, width):
    """Proposals (N, 4), best objectness first."""
    boxes, logits, level_ids = [], [], []
    for level in sorted(levels):
        p = levels[level]
        t = F.relu(conv(sd, 'proposal_generator.rpn_head.conv', p, padding=1))
        objectness = conv(sd, 'proposal_generator.rpn_head.objectness_logits', t)
        deltas = conv(sd, 'proposal_generator.rpn_head.anchor_deltas', t)
        num_anchors, h, w = objectness.shape[1:]
        objectness = objectness.permute(0, 2, 3, 1).reshape(-1)
        deltas = deltas.view(1, num_anchors, 4, h, w).permute(0, 3, 4, 1, 2).reshape(-1, 4)
        proposals = apply_deltas(deltas, anchors(level, h, w), (1., 1., 1., 1.))
        order = torch.argsort(objectness, descending=True)[:RPN_PRE_NMS_TOPK]
        boxes.append(proposals[order])
        logits.append(objectness[order])
        level_ids.append(torch.full((len(order), ), level))
    boxes, logits, level_ids = torch.cat(boxes), torch.cat(logits), torch.cat(level_ids)
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(logits)
    boxes, logits, level_ids = clip(boxes[finite], height, width), logits[finite], level_ids[finite]
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, logits, level_ids = boxes[nonempty], logits[nonempty], level_ids[nonempty]
    keep = batched_nms(boxes, logits, level_ids, RPN_NMS)[:RPN_POST_NMS_TOPK]
    return boxes[keep]


def _axis_weights(starts, bin_sizes, out, grid, size):
    """(R, out * grid, size) bilinear weights of ROIAlign's sample points along one axis, for R
    boxes of one level with the same grid (torchvision's ``bilinear_interpolate``, in float32)."""
    steps = (torch.arange(out, dtype=torch.float32)[:, None]
             + (torch.arange(grid, dtype=torch.float32)[None, :] + 0.5) / grid).reshape(-1)
    c = starts[:, None] + steps[None, :] * bin_sizes[:, None]  # (R, out * grid)
    inside = ((c >= -1.0) & (c <= size)).float()  # outside the map the sample is 0
    c = c.clamp(min=0)
    low = c.floor().long()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(c), c - low.float())
    weights = torch.zeros(*c.shape, size)
    weights.scatter_add_(2, low[..., None], ((1 - frac) * inside)[..., None])
    weights.scatter_add_(2, high[..., None], (frac * inside)[..., None])
    return weights


def roi_align(feature, boxes, out, scale):
    """ROIAlignV2 (aligned=True, sampling_ratio=0) of boxes on a (C, H, W) map: (R, C, out, out).

    Each bin averages ceil(roi_size / out) x ceil(...) bilinear samples; bilinear sampling is
    separable, so the samples of a box are ``Wy @ feature @ Wx^T``. Boxes are processed in
    groups with the same sample grid.
    """
    rois = boxes * scale - 0.5
    roi_w, roi_h = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
    grid_h, grid_w = torch.ceil(roi_h / out).long(), torch.ceil(roi_w / out).long()
    result = feature.new_zeros(len(boxes), feature.shape[0], out, out)
    for gh, gw in {(int(h), int(w)) for h, w in zip(grid_h, grid_w)}:
        group = torch.nonzero((grid_h == gh) & (grid_w == gw))[:, 0]
        if gh <= 0 or gw <= 0:
            continue  # an empty box: no samples, the output stays 0
        wy = _axis_weights(rois[group, 1], roi_h[group] / out, out, gh, feature.shape[1])
        wx = _axis_weights(rois[group, 0], roi_w[group] / out, out, gw, feature.shape[2])
        samples = torch.einsum('ryh,chw,rxw->rcyx', wy, feature, wx)
        result[group] = samples.view(len(group), -1, out, gh, out, gw).mean(dim=(3, 5))
    return result


def pool(levels, boxes, out):
    """(N, 256, out, out) features of boxes, each from its FPN level."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    assigned = torch.floor(4 + torch.log2(sizes / 224 + 1e-8)).clamp(min=2, max=5).long()
    result = levels[2].new_zeros(len(boxes), levels[2].shape[1], out, out)
    for level in range(2, 6):
        chosen = assigned == level
        if chosen.any():
            result[chosen] = roi_align(levels[level][0], boxes[chosen], out, 1. / 2 ** level)
    return result


def box_head(sd, levels, proposals, height, width):
    """(boxes, scores, classes) of the detections, best score first, and the (R, 80) class
    scores of all proposals."""
    x = pool(levels, proposals, 7).flatten(1)
    x = F.relu(F.linear(x, sd['roi_heads.box_head.fc1.weight'], sd['roi_heads.box_head.fc1.bias']))
    x = F.relu(F.linear(x, sd['roi_heads.box_head.fc2.weight'], sd['roi_heads.box_head.fc2.bias']))
    logits = F.linear(x, sd['roi_heads.box_predictor.cls_score.weight'],
                      sd['roi_heads.box_predictor.cls_score.bias'])
    deltas = F.linear(x, sd['roi_heads.box_predictor.bbox_pred.weight'],
                      sd['roi_heads.box_predictor.bbox_pred.bias'])
    scores = F.softmax(logits, dim=-1)[:, :-1]  # background is the last class
    boxes = clip(apply_deltas(deltas, proposals, BOX_WEIGHTS).view(len(proposals), -1, 4),
                 height, width)
    passed = scores > SCORE_THRESH
    rows_classes = torch.nonzero(passed)
    all_scores = scores
    boxes, scores = boxes[passed], scores[passed]
    keep = batched_nms(boxes, scores, rows_classes[:, 1], BOX_NMS)[:DETECTIONS_PER_IMAGE]
    return boxes[keep], scores[keep], rows_classes[keep, 1], all_scores


def mask_head(sd, levels, boxes, classes):
    """(N, 28, 28) mask probabilities of each detection's class."""
    x = pool(levels, boxes, 14)
    for k in range(1, 5):
        x = F.relu(conv(sd, f'roi_heads.mask_head.mask_fcn{k}', x, padding=1))
    x = F.relu(F.conv_transpose2d(x, sd['roi_heads.mask_head.deconv.weight'],
                                  sd['roi_heads.mask_head.deconv.bias'], stride=2))
    logits = conv(sd, 'roi_heads.mask_head.predictor', x)
    return logits[torch.arange(len(boxes)), classes].sigmoid()


def paste_mask(mask, box, height, width, threshold=0.5):
    """One (28, 28) probability map pasted into the image: (H, W) bool (mask_ops, CPU path)."""
    x0 = max(int(math.floor(box[0].item())) - 1, 0)
    y0 = max(int(math.floor(box[1].item())) - 1, 0)
    x1 = min(int(math.ceil(box[2].item())) + 1, width)
    y1 = min(int(math.ceil(box[3].item())) + 1, height)
    img_y = (torch.arange(y0, y1, dtype=torch.float32) + 0.5 - box[1]) / (box[3] - box[1]) * 2 - 1
    img_x = (torch.arange(x0, x1, dtype=torch.float32) + 0.5 - box[0]) / (box[2] - box[0]) * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(img_x[None, :], img_y[:, None]), dim=-1)
    region = F.grid_sample(mask[None, None], grid[None], align_corners=False)[0, 0]
    pasted = torch.zeros(height, width, dtype=torch.bool)
    pasted[y0:y1, x0:x1] = region >= threshold
    return pasted


@torch.no_grad()
def d2_mask_rcnn_inference(sd, arch, image):
    """Detections of the release's Mask R-CNN on one normalised, 32-aligned (1, 3, H, W) image:
    dict of boxes (N, 4), scores (N, ), classes (N, ) and masks (N, H, W), best score first;
    also the proposals (R, 4) and their class scores (R, 80)."""
    height, width = image.shape[-2:]
    assert height % 32 == 0 and width % 32 == 0, 'Detectron2 pads its input to multiples of 32'
    levels = fpn(sd, backbone_features(sd, arch, image))
    proposals = rpn(sd, levels, height, width)
    boxes, scores, classes, class_scores = box_head(sd, {k: levels[k] for k in range(2, 6)},
                                                    proposals, height, width)
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
    probs = mask_head(sd, {k: levels[k] for k in range(2, 6)}, boxes, classes)
    masks = torch.stack([paste_mask(p, b, height, width) for p, b in zip(probs, boxes)]) \
        if len(boxes) else torch.zeros(0, height, width, dtype=torch.bool)
    return {'boxes': boxes, 'scores': scores, 'classes': classes, 'masks': masks,
            'proposals': proposals, 'class_scores': class_scores}
