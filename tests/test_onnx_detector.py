"""The whole detector as one ONNX graph (restv2_mm.deploy.detector) against mmdet's predict.

Operators first (NMS and RoIAlign give mmcv's results in ONNX Runtime, exactly), then whole
detectors: exported once at one size, they must give mmdet's detections (boxes, scores, labels,
pasted masks) at other sizes and with batches of differently sized, padded images. Synthetic
weights: random, with the heads' final layers rescaled so that detections exist
(spread_head_outputs). The configs' heads and test settings are kept, except for fewer
proposals and output slots where noted, which keeps the mask and box heads (most of the time
on a CPU) small; the code path is the same.
"""
import functools
import importlib.util
import json
import os.path as osp

import numpy as np
import pytest
import torch

from restv2_mm.deploy import (DetectorGraph, build_restv2_model, export_detector, ort_session,
                              spread_head_outputs, verify_detector)
from restv2_mm.deploy.detection_ops import batched_nms_indices, roi_align
from restv2_mm.deploy.detector_check import (check_images, match_detections, split_outputs,
                                             torch_detections)

EXPORT_SHAPE = (64, 96)
CHECK_SHAPES = ((75, 99), (110, 70))  # not multiples of 32; the second image of a batch smaller
# Fewer proposals and detections than the configs (1000 / 100): the same graph, less head work.
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SMALL_TWO_STAGE = {'model.test_cfg.rpn.max_per_img': 150, 'model.test_cfg.rcnn.max_per_img': 15}
SMALL_RETINANET = {'model.test_cfg.nms_pre': 300, 'model.test_cfg.max_per_img': 30}
MASK_RCNN_STYLE = 'hwin'  # the Mask R-CNN-T that every test of this file shares (built once)


@functools.lru_cache(maxsize=None)
def _synthetic_detector(config, style, options):
    torch.manual_seed(0)
    model, scope = build_restv2_model(config, cfg_options={'model.backbone.attn_style': style,
                                                           **dict(options)})
    assert scope == 'mmdet'
    return spread_head_outputs(model)


def synthetic_detector(config, style, options):
    """A built detector with synthetic weights, shared by the tests of this file (built once;
    a test that changes it puts it back)."""
    return _synthetic_detector(config, style, tuple(sorted(options.items())))


def random_boxes(generator, batch, n, size=60.):
    xy = torch.rand(batch, n, 2, generator=generator) * size
    wh = torch.rand(batch, n, 2, generator=generator) * size / 2 + 1
    return torch.cat([xy, xy + wh], -1)


class _NMSAndRoIAlign(torch.nn.Module):
    def __init__(self, aligned, sampling_ratio):
        super().__init__()
        from mmcv.ops import RoIAlign
        self.layer = RoIAlign((5, 4), 0.25, sampling_ratio, aligned=aligned)

    def forward(self, feats, boxes, scores, idxs):
        selected = batched_nms_indices(boxes, scores, idxs, scores > 0.2, 0.5, 7)
        image, index = selected[:, 0], selected[:, 2]
        return selected, roi_align(self.layer, feats, boxes[image, index], image)


@pytest.mark.parametrize('aligned,sampling_ratio', [(True, 0), (False, 2)])
def test_nms_and_roi_align_are_mmcvs_in_onnx_runtime(tmp_path, aligned, sampling_ratio):
    """Per image: mmcv's batched_nms (classes apart, the 7 best kept), and mmcv's RoIAlign on
    the kept boxes, bit for bit, at other batch sizes and counts, and with nothing kept."""
    from mmcv.ops import batched_nms
    module = _NMSAndRoIAlign(aligned, sampling_ratio)
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(2, 8, 24, 24, generator=g), random_boxes(g, 2, 40),
            torch.rand(2, 40, generator=g), torch.randint(0, 3, (2, 40), generator=g))
    path = str(tmp_path / 'ops.onnx')
    axes = {'feats': {0: 'b', 2: 'h', 3: 'w'}, 'boxes': {0: 'b', 1: 'n'},
            'scores': {0: 'b', 1: 'n'}, 'idxs': {0: 'b', 1: 'n'}}
    with torch.no_grad():
        torch.onnx.export(module, args, path, dynamo=False, opset_version=16,
                          input_names=list(axes), output_names=['selected', 'feats_out'],
                          dynamic_axes=axes)
    session = ort_session(path)
    for batch, n, low_scores in ((3, 90, False), (1, 12, False), (2, 30, True)):
        feats = torch.randn(batch, 8, 19, 26, generator=g)
        boxes, idxs = random_boxes(g, batch, n), torch.randint(0, 4, (batch, n), generator=g)
        scores = torch.rand(batch, n, generator=g) * (0.1 if low_scores else 1)
        got = session.run(None, {'feats': feats.numpy(), 'boxes': boxes.numpy(),
                                 'scores': scores.numpy(), 'idxs': idxs.numpy()})
        expected = []
        for b in range(batch):
            valid = (scores[b] > 0.2).nonzero().squeeze(1)
            if len(valid):
                _, keep = batched_nms(boxes[b, valid], scores[b, valid], idxs[b, valid],
                                      dict(type='nms', iou_threshold=0.5))
                expected += [(b, 0, int(i)) for i in valid[keep[:7]]]
        np.testing.assert_array_equal(got[0], np.array(expected, dtype=np.int64).reshape(-1, 3))
        assert len(expected) > 0 or low_scores
        image = torch.from_numpy(got[0][:, 0])
        rois = torch.cat([image[:, None].float(), boxes[image, torch.from_numpy(got[0][:, 2])]], 1)
        np.testing.assert_array_equal(got[1], module.layer(feats, rois).numpy())


def test_graph_computes_mmdet_predict(tmp_path):
    """The module that is traced is mmdet's predict: the same boxes, scores, labels and masks,
    to the bit, for a padded batch of two sizes."""
    model = synthetic_detector('configs/mask_rcnn_restv2_t.py', MASK_RCNN_STYLE, SMALL_TWO_STAGE)
    images, sizes = check_images(2, (70, 90))
    graph = DetectorGraph(model).eval()
    with torch.no_grad():
        outputs = [o.numpy() for o in graph(images, sizes)]
    ref = torch_detections(model, images, sizes)
    got = split_outputs(outputs, sizes.numpy(), mask_threshold=0.5)
    assert [len(r['scores']) for r in ref] == outputs[3].tolist()
    assert sum(len(r['scores']) for r in ref) > 10
    for r, d in zip(ref, got):
        for key in ('boxes', 'scores', 'labels', 'masks'):
            np.testing.assert_array_equal(r[key], d[key])
    # padding rule of the empty slots
    for b, n in enumerate(outputs[3].tolist()):
        assert (outputs[2][b, n:] == -1).all() and (outputs[1][b, n:] == 0).all()
        assert (outputs[0][b, n:] == 0).all() and (outputs[4][b, n:] == 0).all()


_EXPORTS = {}


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """exported(config, style, options) -> (synthetic detector, its graph exported at
    EXPORT_SHAPE): each exported once for the tests of this file."""
    def export(config, style, options):
        key = (config, style, tuple(sorted(options.items())))
        if key not in _EXPORTS:
            model = synthetic_detector(config, style, options)
            path = str(tmp_path_factory.mktemp('detector') / 'detector.onnx')
            export_detector(model, path, shape=EXPORT_SHAPE)
            _EXPORTS[key] = model, path
        return _EXPORTS[key]

    return export


# One attention style per detector, a different one each (Cascade below: a third); every style
# exports at every size through the backbone alone in tests/test_onnx.py. hwin: the windows
# padded at sizes that are no multiple of them, the hardest case for a dynamic graph.
@pytest.mark.parametrize('config,style,options', [
    ('configs/mask_rcnn_restv2_t.py', MASK_RCNN_STYLE, SMALL_TWO_STAGE),
    ('configs/retinanet_restv2_t.py', 'win', SMALL_RETINANET),
])
def test_detector_exports_with_dynamic_sizes_and_matches(exported, config, style, options):
    import onnx
    model, path = exported(config, style, options)
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ['input', 'image_sizes']
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3], f'batch/H/W not dynamic: {dims}'
    ops = {n.op_type for n in graph.node}
    assert {'NonMaxSuppression', 'TopK'} <= ops
    assert all(n.domain in ('', 'ai.onnx') for n in graph.node), 'custom operators in the graph'
    with_mask = 'mask_rcnn' in config
    assert ('RoiAlign' in ops) == with_mask
    assert [o.name for o in graph.output] == ['boxes', 'scores', 'labels', 'num_detections'] + \
        (['masks'] if with_mask else [])
    stats = verify_detector(model, path, CHECK_SHAPES, batch=2, log=lambda m: None)
    assert stats['torch_detections'] >= 20, stats  # something was compared
    assert stats['matched_fraction'] >= 0.95 and stats['max_score_diff'] < 1e-4, stats
    if with_mask:
        assert stats['mask_iou_mean'] > 0.99, stats


def test_raw_images_give_mmdet_inference_results(exported, tmp_path):
    """A raw image through preprocess (the config's test pipeline: resize, normalise, pad),
    the graph and to_data_samples (boxes rescaled, masks pasted into the original image)
    gives what mmdet's own inference_detector gives."""
    import cv2
    from mmdet.apis import inference_detector
    from mmengine.config import Config

    from restv2_mm.deploy import run_images
    model, path = exported('configs/mask_rcnn_restv2_t.py', MASK_RCNN_STYLE, SMALL_TWO_STAGE)
    # The quick-start config: the same model, its test pipeline resizes to 128 x 128 (keep
    # ratio), so a 100 x 150 image is scaled by 0.853 and padded to 96 x 128.
    cfg = Config.fromfile('configs/mask_rcnn_restv2_t_tiny_coco.py')
    image = (np.random.default_rng(0).random((100, 150, 3)) * 255).astype(np.uint8)
    cv2.rectangle(image, (20, 30), (90, 80), (40, 40, 200), -1)
    file = str(tmp_path / 'image.jpg')
    cv2.imwrite(file, image)
    sample = run_images(ort_session(path), cfg, [file])[0]
    assert sample.img_shape == (85, 128) and sample.batch_input_shape == (96, 128)
    model.cfg = cfg  # what inference_detector reads its pipeline from
    try:
        expected = inference_detector(model, file).pred_instances
    finally:
        del model.cfg
    got = sample.pred_instances
    assert got.masks.shape[1:] == expected.masks.shape[1:] == (100, 150)
    as_numpy = [dict(boxes=p.bboxes.numpy(), scores=p.scores.numpy(), labels=p.labels.numpy(),
                     masks=p.masks.numpy()) for p in (expected, got)]
    stats = match_detections(as_numpy[:1], as_numpy[1:])
    assert stats['torch_detections'] >= 5 and stats['matched_fraction'] == 1.0, stats
    assert stats['mask_iou_mean'] > 0.99, stats


def test_cascade_mask_rcnn_exports_and_matches(tmp_path):
    options = {'model.test_cfg.rpn.max_per_img': 60, 'model.test_cfg.rcnn.max_per_img': 8}
    model = synthetic_detector('configs/cascade_mask_rcnn_restv2_t.py', 'cwin', options)
    path = str(tmp_path / 'cascade.onnx')
    export_detector(model, path, shape=EXPORT_SHAPE)
    stats = verify_detector(model, path, CHECK_SHAPES[:1], batch=1, log=lambda m: None)
    assert stats['torch_detections'] >= 4 and stats['matched_fraction'] >= 0.95, stats
    assert stats['mask_iou_mean'] > 0.99, stats


def test_check_fails_loudly_when_detections_differ(exported):
    """A graph of other weights than the model's: the check must say so."""
    model, path = exported('configs/retinanet_restv2_t.py', 'win', SMALL_RETINANET)
    bias = model.bbox_head.retina_cls.bias  # (anchors x classes), class fastest
    num_classes = model.bbox_head.cls_out_channels
    with torch.no_grad():
        bias[3::num_classes] += 3.0  # class 3 scores higher in PyTorch only
    try:
        with pytest.raises(RuntimeError, match='differ from PyTorch beyond the tolerance'):
            verify_detector(model, path, CHECK_SHAPES[:1], batch=1, log=lambda m: None)
    finally:
        with torch.no_grad():
            bias[3::num_classes] -= 3.0


def test_matching_is_set_wise_and_counts_misses():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [5, 5, 30, 30]], np.float32)
    ref = [dict(boxes=boxes, scores=np.array([.9, .8, .8000001], np.float32),
                labels=np.array([1, 2, 2]))]
    swapped = [dict(boxes=boxes[[0, 2, 1]], scores=ref[0]['scores'][[0, 2, 1]],
                    labels=ref[0]['labels'][[0, 2, 1]])]
    assert match_detections(ref, swapped)['matched_fraction'] == 1.0
    moved = [dict(boxes=boxes + np.array([0, 0, 3, 0], np.float32), scores=ref[0]['scores'],
                  labels=ref[0]['labels'])]
    assert match_detections(ref, moved)['matched'] == 0
    extra = [dict(boxes=np.concatenate([boxes, boxes[:1] + 50]),
                  scores=np.array([.9, .8, .8000001, .5], np.float32),
                  labels=np.array([1, 2, 2, 0]))]
    stats = match_detections(ref, extra)
    assert stats['matched'] == 3 and stats['matched_fraction'] == 0.75
    json.dumps(stats)  # plain floats: the benchmark writes them to its JSON report


def test_unsupported_detectors_and_opsets_get_clear_errors(tmp_path, capsys):
    from restv2_mm.deploy import export_config
    with pytest.raises(ValueError, match='opset >= 16'):
        export_config('configs/mask_rcnn_restv2_t.py', str(tmp_path / 'x.onnx'), opset=15)
    # The tool says it and exits 1 (tests/test_convergence.py runs it end to end).
    spec = importlib.util.spec_from_file_location(
        'restv2_export_onnx_tool', osp.join(REPO, 'tools', 'deployment', 'export_onnx.py'))
    export_onnx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_onnx)
    assert export_onnx.main(['configs/retinanet_restv2_t.py', '--out', str(tmp_path / 'x.onnx'),
                             '--opset', '15']) == 1
    assert 'opset >= 16' in capsys.readouterr().err
    assert not (tmp_path / 'x.onnx').exists()
    model = synthetic_detector('configs/mask_rcnn_restv2_t.py', MASK_RCNN_STYLE, SMALL_TWO_STAGE)
    nms = model.roi_head.test_cfg.nms
    nms.type = 'soft_nms'
    try:
        with pytest.raises(ValueError, match="only type='nms'"):
            DetectorGraph(model)
    finally:
        nms.type = 'nms'
    from mmdet.registry import MODELS
    fcos = MODELS.build(dict(
        type='FCOS',
        backbone=dict(type='ResTv2', arch=dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1),
                                               num_heads=(1, 1, 1, 1))),
        neck=dict(type='FPN', in_channels=[8, 16, 24, 32], out_channels=32, num_outs=5),
        bbox_head=dict(type='FCOSHead', num_classes=3, in_channels=32, feat_channels=32,
                       stacked_convs=1),
        test_cfg=dict(nms_pre=100, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),
                      max_per_img=10)))
    with pytest.raises(ValueError, match='only anchor-based dense heads'):
        DetectorGraph(fcos)
