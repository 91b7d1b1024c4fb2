"""Mixed-precision inference (restv2_mm.utils.amp, ``--amp`` of tools/test.py and tools/demo.py):
bfloat16 autocast on CPU runs Mask R-CNN and UperNet end to end and stays close to float32.

Untrained models at small sizes; no timing anywhere. The accuracy of a *trained* model under
``--amp`` is checked by the convergence test (tools/test.py --amp on the trained tiny model).
"""
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import restv2_mm  # noqa: F401
from restv2_mm.utils.amp import (amp_autocast, amp_dtype, enable_amp_inference,
                                 outputs_to_float32, prepare_amp_model)
from restv2_mm.utils.flops import load_config

ROOT = Path(__file__).resolve().parents[1]
BF16 = torch.bfloat16


def build(config, scope, **test_cfg):
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    cfg = load_config(str(ROOT / 'configs' / config))
    cfg.model.backbone.init_cfg = None
    for key, value in test_cfg.items():
        cfg.model.test_cfg.rcnn[key] = value
    torch.manual_seed(0)
    model = registry.build(cfg.model)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)  # init_weights logs every tensor
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model.eval()


def det_samples(h, w):
    from mmdet.structures import DetDataSample
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                scale_factor=(1., 1.))
    return [DetDataSample(metainfo=meta)]


def seg_samples(h, w):
    from mmseg.structures import SegDataSample
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w))
    return [SegDataSample(metainfo=meta)]


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / a.float().norm()).item()


def test_amp_dtype_per_device():
    assert amp_dtype('cpu') is BF16 and amp_dtype('cuda:0') is torch.float16
    with pytest.raises(ValueError, match='cpu'):
        amp_dtype('meta')


def test_mmcv_ops_run_in_float32_under_autocast():
    from mmcv.ops import batched_nms, roi_align
    prepare_amp_model(torch.nn.Module())  # patches the ops
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(60, 2, generator=g) * 40], 1)
    scores, labels = torch.rand(60, generator=g), torch.randint(0, 3, (60, ), generator=g)
    ref_dets, ref_keep = batched_nms(boxes, scores, labels, dict(type='nms', iou_threshold=0.5))
    with amp_autocast('cpu'):  # NMS used to fail here: expected scalar type Float
        dets, keep = batched_nms(boxes.to(BF16), scores, labels,
                                 dict(type='nms', iou_threshold=0.5))
    assert len(keep) > 1
    # Boxes rounded to bfloat16 may flip a few overlaps near the threshold; most survive alike.
    assert len(set(keep.tolist()) ^ set(ref_keep.tolist())) <= 0.1 * len(ref_keep)

    feats = torch.randn(1, 8, 32, 32, generator=g, requires_grad=True)
    rois = torch.tensor([[0., 2., 3., 20., 25.], [0., 10., 0., 31., 12.]])
    ref = roi_align(feats, rois, (7, 7), 1.0, 2, 'avg', True)
    with amp_autocast('cpu'):
        low = feats.to(BF16)
        out = roi_align(low, rois, (7, 7), 1.0, 2, 'avg', True)
    assert out.dtype is BF16  # back in the features' dtype: mmdet writes it into such a buffer
    assert relative_error(ref, out) < 1e-2
    out.float().sum().backward()  # backward of the float32 kernel with bfloat16 gradients
    ref_grad = torch.autograd.grad(ref.sum(), feats)[0]
    assert relative_error(ref_grad, feats.grad) < 1e-2


@pytest.fixture(scope='module')
def mask_rcnn():
    # Score threshold 0 and a fixed number of detections: an untrained head's scores are all
    # close to 1/81, so a threshold would keep a different number of boxes per precision.
    return build('mask_rcnn_restv2_t.py', 'mmdet', score_thr=0., max_per_img=20)


def test_mask_rcnn_predict_bf16_close_to_fp32(mask_rcnn):
    from mmdet.structures.bbox import bbox_overlaps
    h, w = 128, 192
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref_feats = mask_rcnn.extract_feat(x)
        ref = mask_rcnn.predict(x, det_samples(h, w))[0].pred_instances
    prepare_amp_model(mask_rcnn)
    with torch.no_grad(), amp_autocast('cpu'):
        feats = mask_rcnn.extract_feat(x)
        out = mask_rcnn.predict(x, det_samples(h, w))
    assert all(f.dtype is BF16 for f in feats)  # the network really ran in bfloat16
    for a, b in zip(ref_feats, feats):
        assert relative_error(a, b) < 0.05
    # Post-processing ran in float32: boxes are not rounded to bfloat16's 8-bit mantissa.
    out = outputs_to_float32(out)[0].pred_instances
    assert out.bboxes.dtype == out.scores.dtype == torch.float32 and out.masks.dtype is torch.bool
    assert len(out) == len(ref) == 20
    iou = bbox_overlaps(ref.bboxes, out.bboxes)
    same = (ref.labels[:, None] == out.labels[None]) & (iou > 0.9)
    assert same.any(1).float().mean() >= 0.8  # nearly every detection found again
    assert (out.scores - ref.scores).abs().max() < 0.01
    matched = (iou * same).argmax(1)
    for i in range(5):
        if same[i].any():
            agree = (ref.masks[i] == out.masks[matched[i]]).float().mean()
            assert agree > 0.98


def test_upernet_predict_bf16_close_to_fp32():
    model = build('upernet_restv2_t.py', 'mmseg')
    h, w = 96, 128
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        ref = model.predict(x, seg_samples(h, w))[0]
    enable_amp_inference(model)  # the tools' entry point: test_step under autocast
    data = dict(inputs=[(x[0] * 64 + 128).clamp(0, 255).to(torch.uint8)],
                data_samples=seg_samples(h, w))
    dtypes = []
    model.backbone.register_forward_hook(lambda m, i, outs: dtypes.append(outs[0].dtype))
    with torch.no_grad():
        ref_step = model.__class__.test_step(model, data)[0]
        out = model.test_step(data)[0]
    assert dtypes == [torch.float32, BF16]  # the plain step, then the one under autocast
    logits, ref_logits = out.seg_logits.data, ref_step.seg_logits.data
    assert logits.dtype == torch.float32 and logits.shape == (150, h, w)
    assert relative_error(ref_logits, logits) < 0.05
    agree = (out.pred_sem_seg.data == ref_step.pred_sem_seg.data).float().mean()
    assert agree > 0.95
    assert ref.seg_logits.data.shape == logits.shape


def _load_demo():
    spec = importlib.util.spec_from_file_location('restv2_demo_tool', ROOT / 'tools' / 'demo.py')
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def _save_checkpoint(model, path):
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), path)


@pytest.mark.slow
def test_test_tool_amp_on_tiny_ade20k(tmp_path):
    """tools/test.py --amp evaluates a checkpoint end to end and says which dtype it uses."""
    from restv2_mm.datasets.tiny_ade20k import make_tiny_ade20k
    data_root = tmp_path / 'tiny_ade20k'
    make_tiny_ade20k(str(data_root), num_train=1, num_val=2)
    ckpt = tmp_path / 'untrained.pth'
    _save_checkpoint(build('upernet_restv2_t_tiny_ade20k.py', 'mmseg'), ckpt)
    cmd = [sys.executable, 'tools/test.py', 'configs/upernet_restv2_t_tiny_ade20k.py', str(ckpt),
           '--amp', '--work-dir', str(tmp_path / 'work'),
           '--cfg-options', f'test_dataloader.dataset.data_root={data_root}']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert 'torch.bfloat16' in output
    assert 'mIoU' in output


@pytest.mark.slow
def test_demo_amp_draws_a_detection(tmp_path):
    import numpy as np
    from PIL import Image
    image = tmp_path / 'image.png'
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(image)
    ckpt = tmp_path / 'untrained.pth'
    _save_checkpoint(build('mask_rcnn_restv2_t.py', 'mmdet'), ckpt)
    vis = _load_demo().run(str(image), str(ROOT / 'configs' / 'mask_rcnn_restv2_t.py'), str(ckpt),
                           score_thr=0.0, amp=True,
                           # the config's pipeline at 320 px: the full 1333x800 costs a minute
                           cfg_options={'test_dataloader.dataset.pipeline.1.scale': (320, 320)})
    assert vis.shape == (120, 160, 3) and vis.dtype == np.uint8
