"""The drop-in matrix: ResTv2 in MMDetection's and MMSegmentation's own configs.

Each family's config is the one docs/drop-in.md gives (written by
``restv2_mm.utils.dropin.dropin_config_text``; tests/test_dropin.py checks the docs against it):
it inherits the library's own config through ``mmdet::`` / ``mmseg::`` and changes only the
backbone and the fields that follow it. It is built with that library's own ``MODELS`` as
tools/train.py builds it on a CPU (SyncBN reverted), random ImageNet weights in the official
layout are loaded through its ``init_cfg``, and it runs one real ``train_step`` (every parameter
gets a gradient, the backbone moves) and one ``test_step`` with the library's own data
preprocessor, on 128x160 detection and 64x80 segmentation images. Only test sizes are shrunk:
fewer proposals, DINO's queries, Mask2Former's points.

Attention styles change nothing but the backbone, so each family runs in one style, the four
taking turns down the table (see CASES): every style runs in both libraries, and the window
styles with windows of 8, 4, 2, 1 tokens, so that every stage of these small images splits into
several windows. Without the fields that follow the backbone, the libraries' own raw errors are
the ones the docs' table quotes.
"""
import re
import traceback

import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.structures import PixelData

import restv2_mm  # noqa: F401
from reference_restv2 import random_official_state_dict
from restv2_mm.utils.config import models_registry
from restv2_mm.utils.dropin import (FAMILIES, FAMILY_BY_KEY, check_dropin, dropin_config_text,
                                    dropin_overrides, load_library_config, parse_error)
from test_zoo_configs import HEIGHT, WIDTH, check_train_then_test, detection_batch

# One attention style per family, taking turns down the table (all four styles for every family
# would cost four times this matrix's share of the suite's time on 2 cores).
STYLES = ('global', 'win', 'cwin', 'hwin')
CASES = [(family.key, STYLES[i % len(STYLES)]) for i, family in enumerate(FAMILIES)]
# Detection images are test_zoo_configs' 128x160 (HEIGHT, WIDTH); segmentation ones 64x80.
SEG_SIZE = (64, 80)
# Windows smaller than the stage maps of both sizes: every stage splits into several windows.
SMALL_WINDOWS = (8, 4, 2, 1)
# Test sizes only (the heads, not the backbone, dominate a CPU at 128x160). Score threshold 0:
# a detector after one step scores below mmdet's 0.05 and its boxes are what the test checks.
TWO_STAGE = {
    'model.train_cfg.rpn_proposal.nms_pre': 200, 'model.train_cfg.rpn_proposal.max_per_img': 100,
    'model.test_cfg.rpn.nms_pre': 200, 'model.test_cfg.rpn.max_per_img': 50,
    'model.test_cfg.rcnn.max_per_img': 10, 'model.test_cfg.rcnn.score_thr': 0.0,
}
ONE_STAGE = {'model.test_cfg.nms_pre': 200, 'model.test_cfg.max_per_img': 10,
             'model.test_cfg.score_thr': 0.0}
FEWER = {
    'faster_rcnn': {**TWO_STAGE, 'model.train_cfg.rcnn.sampler.num': 64},
    'mask_rcnn': {**TWO_STAGE, 'model.train_cfg.rcnn.sampler.num': 64},
    'cascade_rcnn': {**TWO_STAGE, **{f'model.train_cfg.rcnn.{i}.sampler.num': 64
                                     for i in range(3)}},
    'retinanet': ONE_STAGE, 'fcos': ONE_STAGE, 'atss': ONE_STAGE,
    # DINO picks num_queries encoder tokens (900 need a larger image than 128x160: 426 tokens);
    # fewer queries and denoising queries, and fewer Mask2Former queries, are test sizes only.
    'dino': {'model.num_queries': 30, 'model.dn_cfg.group_cfg.num_dn_queries': 10},
    'mask2former': {'model.decode_head.num_queries': 20,
                    'model.decode_head.train_cfg.num_points': 256},
}


def scope_of(family):
    return family.base.split('::')[0]


def segmentation_batch(num_images=2):
    """(3, H, W) uint8 images with ADE20K-style labels (0..149), as the data loader gives them."""
    from mmseg.structures import SegDataSample
    height, width = SEG_SIZE
    samples = []
    for _ in range(num_images):
        sample = SegDataSample(metainfo=dict(img_shape=SEG_SIZE, ori_shape=SEG_SIZE))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, height, width)))
        samples.append(sample)
    return dict(inputs=[torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
                        for _ in range(num_images)], data_samples=samples)


@pytest.fixture(scope='module')
def imagenet_weights(tmp_path_factory):
    """Random ResTv2-T weights in the official ImageNet layout ({'model': ...}, classifier in)."""
    state_dict = random_official_state_dict('tiny', seed=3)
    path = tmp_path_factory.mktemp('imagenet') / 'restv2_tiny_224.pth'
    torch.save({'model': state_dict}, path)
    return str(path), state_dict


def dropin_cfg(family, tmp_dir, weights, style):
    """The docs' config of ``family`` in ``style``, written to a file and read by mmengine, at
    test sizes."""
    path = tmp_dir / f'{family.key}_restv2_t_{style}.py'
    path.write_text(dropin_config_text(family.base, attn_style=style))
    cfg = Config.fromfile(str(path))
    options = {'model.backbone.init_cfg.checkpoint': weights, **FEWER.get(family.key, {})}
    if style != 'global':
        options['model.backbone.window_size'] = SMALL_WINDOWS
    if scope_of(family) == 'mmseg':  # the preprocessor pads to the crop size (512x512)
        options['model.data_preprocessor.size'] = SEG_SIZE
    cfg.merge_from_dict(options)
    return cfg


@pytest.mark.parametrize('key, style', CASES)
def test_dropin_trains_and_tests(key, style, tmp_path, imagenet_weights):
    family = FAMILY_BY_KEY[key]
    weights, official = imagenet_weights
    cfg = dropin_cfg(family, tmp_path, weights, style)
    check_dropin(cfg)  # the helper accepts its own configs
    model = revert_sync_batchnorm(models_registry(scope_of(family)).build(cfg.model))
    model.init_weights()
    backbone = model.backbone
    assert type(backbone).__name__ == 'ResTv2' and backbone.attn_style == style
    if style != 'global':
        assert backbone.window_size == SMALL_WINDOWS
    # The ImageNet weights came through the config's init_cfg (official names converted).
    torch.testing.assert_close(backbone.stem.proj[0].weight, official['stem.proj.0.weight'])
    torch.testing.assert_close(backbone.stages[2].blocks[5].attn.q.weight,
                               official['stage3.5.attn.q.weight'])
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)

    if scope_of(family) == 'mmdet':
        batch = detection_batch(with_masks=key == 'mask_rcnn')
        result = check_train_then_test(model, optim_wrapper, batch)
        keys = {'bboxes', 'scores', 'labels'} | ({'masks'} if key == 'mask_rcnn' else set())
        assert keys <= set(result.pred_instances.keys())
        assert len(result.pred_instances) > 0
    else:
        result = check_train_then_test(model, optim_wrapper, segmentation_batch())
        assert tuple(result.pred_sem_seg.data.shape) == (1, *SEG_SIZE)
        assert result.seg_logits.data.shape[0] == 150


def forward_without_channel_lines(family):
    """What a user gets who swapped the backbone but kept the base config's neck / head: the
    maps of the family's backbone lines fed to the neck (mmdet) or decode head (mmseg) of the
    base config."""
    base = load_library_config(family.base)
    models = models_registry(scope_of(family))
    lines, _ = dropin_overrides(family.base)
    backbone = models.build({k: v for k, v in lines['backbone'].items()
                             if k not in ('_delete_', 'init_cfg')})
    size = (HEIGHT, WIDTH) if scope_of(family) == 'mmdet' else SEG_SIZE
    with torch.no_grad():
        feats = backbone.eval()(torch.randn(1, 3, *size))
        if scope_of(family) == 'mmdet':
            models.build(base.model.neck)(feats)
        else:  # as EncoderDecoder.encode_decode runs it
            meta = dict(img_shape=size, pad_shape=size, ori_shape=size)
            models.build(base.model.decode_head).predict(list(feats), [meta], base.model.test_cfg)


def matches_documented_error(error: BaseException, documented: str) -> bool:
    """Whether ``error`` is the one the docs quote (type, message with … for sizes, and the
    library's source line that raised it, where quoted)."""
    kind, message, line, filename = parse_error(documented)
    if type(error).__name__ != kind:
        return False
    pattern = re.escape(message or '').replace('…', r'\d+')
    if re.fullmatch(pattern, str(error)) is None:
        return False
    frame = traceback.extract_tb(error.__traceback__)[-1]
    return line is None or (frame.line == line
                            and frame.filename.replace('\\', '/').endswith(filename))


@pytest.mark.parametrize('family', FAMILIES, ids=[f.key for f in FAMILIES])
def test_forgotten_channel_lines_raise_the_documented_error(family):
    with pytest.raises(Exception) as info:
        forward_without_channel_lines(family)
    frame = traceback.extract_tb(info.value.__traceback__)[-1]
    assert matches_documented_error(info.value, family.error), \
        f'{type(info.value).__name__}: {info.value} at `{frame.line}` ({frame.filename})'
