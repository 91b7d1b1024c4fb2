"""The exported detector against mmdet's own ``predict``: ONNX Runtime vs PyTorch detections.

Detections are compared as sets, not slot by slot: two detections whose scores differ by less
than the two runtimes' float noise may come out in either order. Per image, each PyTorch
detection (best score first) is matched to the ONNX Runtime detection of the same label with
the highest box IoU; it counts as matched when that IoU is at least ``min_iou`` and the
scores differ by at most ``score_atol``. Masks of matched detections are compared as pasted,
thresholded masks (mmdet's pasting, ``mask_thr_binary``): their IoU (1 when both are empty).

Tolerance (:data:`DEFAULT_TOLERANCE`, failing with a ``RuntimeError`` beyond it):
``matched / max(#PyTorch, #ONNX Runtime) >= min_matched`` over all checked images, and the mean
mask IoU of the matched detections >= ``min_mask_iou``. A match fraction below 1 is allowed
because NMS and top-k decide between near-equal scores: where two overlapping candidates'
scores differ by less than the float noise between ONNX Runtime's and PyTorch's kernels
(~1e-5 relative), either may be kept. Random weights make such near-ties common; trained ones
rare (the quick-start detector: every detection matched, see docs/deployment-detector.md).
"""
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

# Final layers of mmdet's heads and the output spread synthetic weights give them
# (logits: std of the pre-bias output; regression: std of the deltas).
HEAD_OUTPUT_STD = {
    'rpn_cls': 2.0, 'rpn_reg': 0.2,  # RPNHead
    'fc_cls': 2.0, 'fc_reg': 0.2,  # BBoxHead (each cascade stage)
    'conv_logits': 3.0,  # FCNMaskHead
    'retina_cls': 2.0, 'retina_reg': 0.2,  # RetinaHead
    'conv_cls': 2.0, 'conv_reg': 0.2,  # AnchorHead
}


@dataclass
class Tolerance:
    min_iou: float = 0.99  # box IoU for a match
    score_atol: float = 1e-3  # |score difference| for a match
    min_matched: float = 0.95  # matched / max(#PyTorch, #ORT) over the check
    min_mask_iou: float = 0.95  # mean IoU of the pasted masks of matched detections


DEFAULT_TOLERANCE = Tolerance()


def spread_head_outputs(detector: nn.Module, shape: Tuple[int, int] = (128, 128),
                        seed: int = 0) -> nn.Module:
    """Rescale (in place) the weights of the heads' final layers (:data:`HEAD_OUTPUT_STD`) so
    that randomly initialised heads give spread-out logits and detections above the score
    threshold. mmdet initialises them with std 0.01 or a prior-probability bias, so that a
    random detector scores every box alike (~1 / num_classes) and keeps none: nothing to
    compare. Measured on one random ``shape`` image; returns ``detector``."""
    from .detector import DetectorGraph
    modules = {name: m for name, m in detector.named_modules()
               if name.split('.')[-1] in HEAD_OUTPUT_STD and getattr(m, 'weight', None) is not None}
    outputs = {name: [] for name in modules}  # every call: a dense head runs once per level
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: outputs[name].append(out))
             for name, m in modules.items()]
    graph = DetectorGraph(detector).eval()
    h, w = shape
    images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            graph(images, torch.tensor([[h, w]]))
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        for name, outs in outputs.items():
            m = modules[name]
            if not outs:
                continue
            std = float(torch.cat([(out if m.bias is None else out - m.bias.view(
                1, -1, *([1] * (out.dim() - 2)))).flatten() for out in outs]).std())
            if std > 0:
                m.weight.mul_(HEAD_OUTPUT_STD[name.split('.')[-1]] / std)
    return detector


def batch_metas(image_sizes: torch.Tensor, padded: Tuple[int, int]) -> List[dict]:
    """mmdet metas of a padded batch of images of ``image_sizes`` (B, 2) at scale 1."""
    return [dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=tuple(padded),
                 batch_input_shape=tuple(padded), scale_factor=(1., 1.))
            for h, w in image_sizes.tolist()]


def torch_detections(detector: nn.Module, images: torch.Tensor,
                     image_sizes: torch.Tensor) -> List[Dict[str, np.ndarray]]:
    """mmdet's ``predict(rescale=False)`` per image: boxes, scores, labels (and masks, bool
    (n, h, w) at the image size)."""
    from mmdet.structures import DetDataSample
    samples = [DetDataSample(metainfo=m) for m in batch_metas(image_sizes, images.shape[2:])]
    detector.eval()
    with torch.no_grad():
        results = detector.predict(images, samples, rescale=False)
    out = []
    for r in results:
        p = r.pred_instances
        d = dict(boxes=p.bboxes.numpy(), scores=p.scores.numpy(), labels=p.labels.numpy())
        if 'masks' in p:
            d['masks'] = p.masks.numpy().astype(bool)
        out.append(d)
    return out


def paste_masks_like_mmdet(probs: np.ndarray, boxes: np.ndarray, height: int, width: int,
                           threshold: float) -> np.ndarray:
    """mmdet's mask pasting on the CPU: probabilities (n, h, w) of boxes (n, 4) -> bool
    (n, height, width). Each map is sampled bilinearly (``grid_sample``) into the pixels around
    its box (``_do_paste_mask`` with ``skip_empty``, one box at a time, as FCNMaskHead does on
    the CPU), then ``>= threshold``."""
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
    out = torch.zeros(len(probs), int(height), int(width), dtype=torch.bool)
    probs, boxes = torch.from_numpy(np.asarray(probs)), torch.from_numpy(np.asarray(boxes))
    for i in range(len(probs)):
        pasted, region = _do_paste_mask(probs[i:i + 1, None], boxes[i:i + 1], int(height),
                                        int(width), skip_empty=True)
        out[(slice(i, i + 1), ) + region] = pasted >= threshold
    return out.numpy()


def split_outputs(outputs: Sequence[np.ndarray], image_sizes: np.ndarray,
                  mask_threshold: Optional[float] = None) -> List[Dict[str, np.ndarray]]:
    """The graph's padded outputs -> per image boxes, scores, labels (and, with a mask output
    and ``mask_threshold``, masks pasted at the image size)."""
    boxes, scores, labels, counts = outputs[:4]
    out = []
    for b, n in enumerate(np.asarray(counts).tolist()):
        d = dict(boxes=boxes[b, :n], scores=scores[b, :n], labels=labels[b, :n])
        if len(outputs) > 4 and mask_threshold is not None:
            h, w = image_sizes[b]
            d['masks'] = paste_masks_like_mmdet(outputs[4][b, :n], boxes[b, :n], h, w,
                                                mask_threshold)
        out.append(d)
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (n, 4) and b (m, 4), x1y1x2y2 -> (n, m)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area_a = np.prod(a[:, 2:] - a[:, :2], -1)
    area_b = np.prod(b[:, 2:] - b[:, :2], -1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-12)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def match_detections(ref: List[dict], got: List[dict],
                     tol: Tolerance = DEFAULT_TOLERANCE) -> Dict[str, float]:
    """Match per image (see the module docstring) and summarise over all images: counts,
    ``matched`` / ``matched_fraction``, the worst box IoU and score difference among matches,
    ``mask_iou_mean`` / ``mask_iou_min`` (masks only)."""
    total_ref = total_got = matched = 0
    ious, score_diffs, mask_ious = [], [], []
    for r, g in zip(ref, got):
        total_ref += len(r['scores'])
        total_got += len(g['scores'])
        if not len(r['scores']) or not len(g['scores']):
            continue
        iou = box_iou(r['boxes'], g['boxes'])
        ok = (r['labels'][:, None] == g['labels'][None]) & \
            (np.abs(r['scores'][:, None] - g['scores'][None]) <= tol.score_atol)
        iou = np.where(ok, iou, -1.0)
        taken = np.zeros(len(g['scores']), bool)
        for i in np.argsort(-r['scores'], kind='stable'):
            candidates = np.where(taken, -1.0, iou[i])
            j = int(candidates.argmax())
            if candidates[j] < tol.min_iou:
                continue
            taken[j] = True
            matched += 1
            ious.append(candidates[j])
            score_diffs.append(abs(float(r['scores'][i]) - float(g['scores'][j])))
            if 'masks' in r and 'masks' in g:
                mask_ious.append(mask_iou(r['masks'][i], g['masks'][j]))
    most = max(total_ref, total_got)
    stats = dict(torch_detections=total_ref, ort_detections=total_got, matched=matched,
                 matched_fraction=matched / most if most else 1.0,
                 min_box_iou=float(min(ious)) if ious else float('nan'),
                 max_score_diff=float(max(score_diffs)) if score_diffs else float('nan'))
    if mask_ious:
        stats.update(mask_iou_mean=float(np.mean(mask_ious)), mask_iou_min=float(min(mask_ious)))
    return stats


def check_image_sizes(batch: int, shape: Tuple[int, int]) -> torch.Tensor:
    """(B, 2) image sizes of a check batch padded to ``shape``: the first image fills it, the
    others are smaller (padded on the bottom and right, as mmdet batches images)."""
    h, w = int(shape[0]), int(shape[1])
    sizes = [(h, w)] + [(max(1, h - 7 * i - 5), max(1, w - 11 * i - 3)) for i in range(1, batch)]
    return torch.tensor(sizes)


def check_images(batch: int, shape: Tuple[int, int], seed: int = 0) -> Tuple[torch.Tensor,
                                                                             torch.Tensor]:
    """A random normalised batch (B, 3, H, W) with zero padding outside each image's size, and
    those sizes (B, 2)."""
    images = torch.randn(batch, 3, *shape, generator=torch.Generator().manual_seed(seed))
    sizes = check_image_sizes(batch, shape)
    for b, (h, w) in enumerate(sizes.tolist()):
        images[b, :, h:] = 0
        images[b, :, :, w:] = 0
    return images, sizes


def mask_threshold(detector: nn.Module) -> Optional[float]:
    """The config's ``mask_thr_binary`` (None without a mask head)."""
    roi_head = getattr(detector, 'roi_head', None)
    if roi_head is None or not roi_head.with_mask:
        return None
    return float(roi_head.test_cfg.get('mask_thr_binary', 0.5))


def compare_detector(detector: nn.Module, session, images: torch.Tensor,
                     image_sizes: torch.Tensor,
                     tol: Tolerance = DEFAULT_TOLERANCE) -> Dict[str, float]:
    """mmdet's ``predict`` of ``detector`` vs the ONNX Runtime ``session`` on one batch:
    :func:`match_detections`'s summary."""
    ref = torch_detections(detector, images, image_sizes)
    feed = {'input': images.numpy(), 'image_sizes': image_sizes.numpy().astype(np.int64)}
    got = split_outputs(session.run(None, feed), image_sizes.numpy(), mask_threshold(detector))
    return match_detections(ref, got, tol)


def within_tolerance(stats: Dict[str, float], tol: Tolerance) -> bool:
    ok = stats['matched_fraction'] >= tol.min_matched
    if 'mask_iou_mean' in stats:
        ok = ok and stats['mask_iou_mean'] >= tol.min_mask_iou
    return ok


def describe(stats: Dict[str, float], tol: Tolerance = DEFAULT_TOLERANCE) -> str:
    text = (f"{stats['matched']}/{stats['torch_detections']} PyTorch detections matched "
            f"({stats['ort_detections']} from ONNX Runtime; same label, box IoU >= "
            f"{tol.min_iou}, score within {tol.score_atol}): worst IoU "
            f"{stats['min_box_iou']:.6f}, largest score difference {stats['max_score_diff']:.2g}")
    if 'mask_iou_mean' in stats:
        text += (f'; pasted masks IoU mean {stats["mask_iou_mean"]:.4f}, min '
                 f'{stats["mask_iou_min"]:.4f}')
    return text


def verify_detector(detector: nn.Module, path: str, shapes: Sequence[Tuple[int, int]],
                    batch: int = 2, threads: int = 1, tol: Tolerance = DEFAULT_TOLERANCE,
                    log=print) -> Dict[str, float]:
    """Run the exported ``path`` in ONNX Runtime and ``detector.predict`` in PyTorch on a random
    ``batch`` (images of different sizes, padded) at each of ``shapes``; raise
    ``RuntimeError`` beyond ``tol``. Returns the summary over all shapes (plus the tolerance)."""
    from .onnx import ort_session
    session = ort_session(path, threads)
    refs, gots = [], []
    threshold = mask_threshold(detector)
    for i, shape in enumerate(shapes):
        images, sizes = check_images(batch, tuple(shape), seed=i)
        try:
            feed = {'input': images.numpy(), 'image_sizes': sizes.numpy()}
            got = split_outputs(session.run(None, feed), sizes.numpy(), threshold)
        except Exception as e:  # ORT shape errors: the graph baked in the export size
            raise RuntimeError(f'ONNX Runtime failed on a {batch}x3x{shape[0]}x{shape[1]} '
                               f'input: {e}') from e
        refs += torch_detections(detector, images, sizes)
        gots += got
    stats = match_detections(refs, gots, tol)
    stats.update({f'tol_{k}': v for k, v in asdict(tol).items()})
    where = ', '.join(f'{batch}x3x{h}x{w}' for h, w in shapes)
    log(f'ONNX Runtime vs PyTorch at {where}: {describe(stats, tol)}')
    if not within_tolerance(stats, tol):
        raise RuntimeError(
            f'ONNX Runtime detections differ from PyTorch beyond the tolerance (matched '
            f'fraction >= {tol.min_matched}, mean mask IoU >= {tol.min_mask_iou}) at {where}: '
            f'{describe(stats, tol)}')
    return stats


def export_and_verify_detector(detector: nn.Module, out: str, shape: Tuple[int, int],
                               opset: int, check_shapes: Sequence[Tuple[int, int]],
                               check_batch: int = 2, threads: int = 1,
                               tol: Tolerance = DEFAULT_TOLERANCE, random_weights: bool = False,
                               name: str = 'the detector', log=print) -> Dict[str, float]:
    """What the export tool does with a detector config: (random weights: spread the heads'
    outputs first, :func:`spread_head_outputs`) export the whole detector to ``out`` with
    dynamic batch, height and width, then :func:`verify_detector` at ``check_shapes``."""
    from .detector import export_detector, roi_head_stages
    if random_weights:
        spread_head_outputs(detector)
        log('No --checkpoint: exporting RANDOM weights, with the final layers of the heads '
            'rescaled so that random boxes score above the threshold (the graph and the ORT '
            'check are still real; pass a trained checkpoint to deploy).')
    graph = export_detector(detector, out, shape=shape, opset=opset)
    log(f'Exported the whole detector of {name} ({" + ".join(roi_head_stages(detector))}) to '
        f'{out} (opset {opset}, traced at {shape[0]}x{shape[1]}; batch, height and width '
        f'dynamic): inputs input (B, 3, H, W), image_sizes (B, 2); outputs '
        f'{", ".join(graph.output_names)}, {graph.max_detections} slots per image')
    return verify_detector(detector, out, check_shapes, batch=check_batch, threads=threads,
                           tol=tol, log=log)
