"""The authors' released Mask R-CNN (Detectron2) and UperNet (MMSegmentation 0.x) models.

Synthetic files in every released layout (tests/released_layouts.py, written from the layout
tables, not from the converter) are converted by ``restv2_mm.converters.convert_checkpoint``:

- every layout, T/S/B, converts and loads strictly into the release-test configs' models, with
  the tensors moved where the facts' key maps say;
- exactness: on 32-aligned inputs the converted Mask R-CNN gives the detections (boxes, scores,
  classes, masks) of a plain transcription of Detectron2's inference that reads the released
  state dict (tests/reference_d2_mask_rcnn.py), and the converted UperNet the logits of the
  ResTv2 transcription followed by MMSegmentation's UPerHead / FCNHead loaded from the file;
  a dropped output norm changes both results;
- bad files get named errors and nothing is written; pickles that name code are refused;
- the release-test pipelines: the segmentation ground truth keeps its size, the detection
  images are decoded and resized like Detectron2 (Pillow).

Slow: the command line, then ``tools/test.py`` on the tiny sets with the converted files.
"""
import os
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import restv2_mm  # noqa: F401
from reference_d2_mask_rcnn import d2_mask_rcnn_inference
from reference_restv2 import reference_forward
from released_layouts import (D2_TENSORS, MMSEG_TENSORS, d2_shapes, mmseg_shapes,
                              random_d2_state_dict, random_mmseg_state_dict, restv1_like,
                              write_d2_pkl, write_d2_pth, write_mmseg0, zeros_state_dict)
from restv2_mm.converters import (ArchMismatchError, ModelMismatchError, ResTv1CheckpointError,
                                  TaskMismatchError, TensorCountError, UnknownKeysError,
                                  convert_checkpoint, read_checkpoint)
from restv2_mm.converters.convert import read_config, resolve_config
from restv2_mm.engine import CheckpointFileError
from restv2_mm.utils.config import models_registry
from subprocess_tools import run_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
LETTERS = {'tiny': 't', 'small': 's', 'base': 'b'}
# Parameters of the whole released models (facts §0.4; the papers' 49.9M ... 87.6M).
RELEASED_PARAMS = {('d2', 'tiny'): 49_941_024, ('d2', 'small'): 60_712_224,
                   ('d2', 'base'): 75_471_456, ('mmseg', 'tiny'): 62_088_284,
                   ('mmseg', 'small'): 72_859_484, ('mmseg', 'base'): 87_618_716}
# Where the facts' key maps (§1.2, §1.3, §4.2) put released tensors in our models.
KEY_MAP = {
    'd2': {
        'backbone.bottom_up.stem.proj.4.running_var': 'backbone.stem.proj.4.running_var',
        'backbone.bottom_up.patch_3.pos.pa_conv.weight':
            'backbone.stages.2.downsample.pos.pa_conv.weight',
        'backbone.bottom_up.stage3.5.attn.sr.weight': 'backbone.stages.2.blocks.5.attn.sr.weight',
        'backbone.bottom_up.stage4.1.attn.up.0.bias': 'backbone.stages.3.blocks.1.attn.up.0.bias',
        **{f'backbone.bottom_up.norm_{k}.0.{p}': f'backbone.norm{k - 1}.{p}'
           for k in range(1, 5) for p in ('weight', 'bias')},
        **{f'backbone.fpn_lateral{k}.weight': f'neck.lateral_convs.{k - 2}.conv.weight'
           for k in range(2, 6)},
        # fpn_output2..5 share one shape: only the values tell a misordering
        **{f'backbone.fpn_output{k}.bias': f'neck.fpn_convs.{k - 2}.conv.bias'
           for k in range(2, 6)},
        'proposal_generator.rpn_head.conv.weight': 'rpn_head.rpn_conv.weight',
        'proposal_generator.rpn_head.objectness_logits.weight': 'rpn_head.rpn_cls.weight',
        'proposal_generator.rpn_head.anchor_deltas.bias': 'rpn_head.rpn_reg.bias',
        'roi_heads.box_head.fc1.weight': 'roi_head.bbox_head.shared_fcs.0.weight',
        'roi_heads.box_head.fc2.bias': 'roi_head.bbox_head.shared_fcs.1.bias',
        'roi_heads.box_predictor.cls_score.weight': 'roi_head.bbox_head.fc_cls.weight',
        'roi_heads.box_predictor.bbox_pred.bias': 'roi_head.bbox_head.fc_reg.bias',
        **{f'roi_heads.mask_head.mask_fcn{k}.weight':
           f'roi_head.mask_head.convs.{k - 1}.conv.weight' for k in range(1, 5)},
        'roi_heads.mask_head.deconv.weight': 'roi_head.mask_head.upsample.weight',
        'roi_heads.mask_head.predictor.bias': 'roi_head.mask_head.conv_logits.bias',
    },
    'mmseg': {
        'backbone.stem.proj.1.num_batches_tracked': 'backbone.stem.proj.1.num_batches_tracked',
        'backbone.patch_2.proj.weight': 'backbone.stages.1.downsample.proj.weight',
        'backbone.stage1.0.attn.kv.weight': 'backbone.stages.0.blocks.0.attn.kv.weight',
        **{f'backbone.norm_{k}.{p}': f'backbone.norm{k - 1}.{p}'
           for k in range(1, 5) for p in ('weight', 'bias')},
        'decode_head.psp_modules.3.1.bn.running_mean':
            'decode_head.psp_modules.3.1.bn.running_mean',
        'decode_head.fpn_bottleneck.conv.weight': 'decode_head.fpn_bottleneck.conv.weight',
        'auxiliary_head.conv_seg.bias': 'auxiliary_head.conv_seg.bias',
    },
}


def release_test_config(task, arch):
    family = 'mask_rcnn' if task == 'd2' else 'upernet'
    return f'configs/{family}_restv2_{LETTERS[arch]}_release_test.py'


def write(folder, kind, state_dict):
    """A released file of ``kind``: d2_v0.6 / d2_v0.4 / d2_head (.pth), d2_pkl, mmseg0."""
    if kind == 'd2_pkl':
        path = osp.join(folder, 'model_final.pkl')
        write_d2_pkl(path, state_dict)
    elif kind.startswith('d2_'):
        path = osp.join(folder, f'model_final_{kind}.pth')
        write_d2_pth(path, state_dict, version=kind[3:])
    else:
        path = osp.join(folder, 'upernet.pth')
        write_mmseg0(path, state_dict)
    return path


def load_converted(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def config(name):
    """The config (parsed once per process, as the converter reads it)."""
    return read_config(resolve_config(name)[0])


def build_converted(name, checkpoint):
    """The config's model with the converted weights, loaded by mmengine strictly."""
    from mmengine.runner import load_checkpoint
    cfg = config(name)
    cfg.model.backbone.init_cfg = None
    model = models_registry('mmdet' if 'mask_rcnn' in name else 'mmseg').build(cfg.model)
    load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    return model.eval()


def write_and_convert(folder, kind, state_dict):
    """(state dict, released file, converted file) in ``folder``."""
    path = write(str(folder), kind, state_dict)
    converted = osp.join(str(folder), 'converted.pth')
    convert_checkpoint(path, converted)
    return state_dict, path, converted


@pytest.fixture(scope='module')
def d2_tiny(tmp_path_factory):
    """Random ResTv2-T Mask R-CNN weights in Detectron2 v0.6's layout, and converted."""
    return write_and_convert(tmp_path_factory.mktemp('d2_tiny'), 'd2_v0.6',
                             random_d2_state_dict('tiny', seed=0))


@pytest.fixture(scope='module')
def mmseg_tiny(tmp_path_factory):
    """Random ResTv2-T UperNet weights in MMSegmentation 0.x's layout, and converted."""
    return write_and_convert(tmp_path_factory.mktemp('mmseg_tiny'), 'mmseg0',
                             random_mmseg_state_dict('tiny', seed=0))


# ----------------------------------------------------------------------------- layouts
def test_layout_tables_have_the_released_counts():
    for arch in LETTERS:
        d2, mmseg = d2_shapes(arch), mmseg_shapes(arch)
        assert len(d2) == D2_TENSORS[arch] and len(mmseg) == MMSEG_TENSORS[arch]
        for task, shapes in (('d2', d2), ('mmseg', mmseg)):
            params = sum(int(np.prod(s)) for k, s in shapes.items()
                         if 'running_' not in k and 'num_batches' not in k)
            assert params == RELEASED_PARAMS[task, arch]


@pytest.mark.parametrize('arch,kind', [
    ('tiny', 'd2_v0.4'), ('tiny', 'd2_head'), ('tiny', 'd2_pkl'), ('small', 'd2_v0.6'),
    ('base', 'd2_v0.6'), ('small', 'mmseg0'), ('base', 'mmseg0')])
def test_every_released_layout_converts(tmp_path, d2_tiny, arch, kind):
    """T as Detectron2 v0.4 / v0.6 / later write it and as a .pkl (the v0.6 .pth and the
    MMSegmentation file of T are the fixtures); S and B with zeros (layout and counts)."""
    task = 'mmseg' if kind == 'mmseg0' else 'd2'
    shapes = d2_shapes(arch) if task == 'd2' else mmseg_shapes(arch)
    sd = d2_tiny[0] if arch == 'tiny' else zeros_state_dict(shapes)
    src, dst = write(str(tmp_path), kind, sd), str(tmp_path / 'converted.pth')
    report = convert_checkpoint(src, dst)
    assert report.arch == arch and report.config == release_test_config(task, arch)
    assert report.tensors == (D2_TENSORS if task == 'd2' else MMSEG_TENSORS)[arch]
    assert report.params == RELEASED_PARAMS[task, arch]
    checkpoint = load_converted(dst)
    assert set(checkpoint) == {'state_dict', 'meta'}
    assert len(checkpoint['meta']['dataset_meta']['classes']) == (80 if task == 'd2' else 150)
    if arch == 'tiny':
        for theirs, ours in KEY_MAP[task].items():
            assert torch.equal(checkpoint['state_dict'][ours], sd[theirs]), theirs
    os.remove(src)  # S and B files are hundreds of MB


def test_tiny_conversions_move_every_tensor(d2_tiny, mmseg_tiny):
    for (sd, _, converted), task in ((d2_tiny, 'd2'), (mmseg_tiny, 'mmseg')):
        ours = load_converted(converted)['state_dict']
        assert len(ours) == len(sd)
        # Every released tensor arrives once (values are random, so they identify the tensors).
        theirs = sorted(round(float(v.double().sum()), 6) for v in sd.values())
        assert sorted(round(float(v.double().sum()), 6) for v in ours.values()) == theirs
        for theirs_key, ours_key in KEY_MAP[task].items():
            assert torch.equal(ours[ours_key], sd[theirs_key])
        meta = load_converted(converted)['meta']
        assert meta['arch'] == 'tiny' and meta['source_layout'] in ('detectron2', 'mmseg0')


def test_dataset_meta_names_the_released_classes(d2_tiny, mmseg_tiny):
    from mmdet.datasets import CocoDataset
    from mmseg.datasets import ADE20KDataset
    det = load_converted(d2_tiny[2])['meta']['dataset_meta']
    seg = load_converted(mmseg_tiny[2])['meta']['dataset_meta']
    # Detectron2's COCO order (ascending category id) is mmdet's; background is last in both.
    assert tuple(det['classes']) == CocoDataset.METAINFO['classes']
    assert tuple(seg['classes']) == ADE20KDataset.METAINFO['classes']
    assert (det['classes'][0], seg['classes'][0]) == ('person', 'wall')
    assert len(det['palette']) == 80 and len(seg['palette']) == 150


# ----------------------------------------------------------------------------- exactness
def normalised_image(height, width, seed=0):
    """An image as both models receive it: normalised, (1, 3, H, W), sides multiples of 32."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, height, width, generator=g)


def mmdet_predict(model, image):
    from mmdet.structures import DetDataSample
    height, width = image.shape[-2:]
    sample = DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                         pad_shape=(height, width), scale_factor=(1., 1.),
                                         batch_input_shape=(height, width)))
    with torch.no_grad():
        return model.predict(image, [sample], rescale=True)[0].pred_instances


def assert_same_detections(ours, ref):
    """Same detections in the same order (best score first); masks may differ only at pixels
    whose probability is within float rounding of the 0.5 threshold."""
    nonempty = (ours.bboxes[:, 2] > ours.bboxes[:, 0]) & (ours.bboxes[:, 3] > ours.bboxes[:, 1])
    ours = ours[nonempty]  # Detectron2 drops empty boxes after clipping; mmdet keeps them
    order = torch.argsort(ours.scores, descending=True)
    assert len(ours) == len(ref['scores']), (len(ours), len(ref['scores']))
    torch.testing.assert_close(ours.scores[order], ref['scores'], rtol=1e-4, atol=1e-6)
    assert torch.equal(ours.labels[order], ref['classes'])
    torch.testing.assert_close(ours.bboxes[order], ref['boxes'], rtol=1e-4, atol=1e-3)
    different = (ours.masks[order].bool() != ref['masks']).sum().item()
    assert different <= 1e-4 * ref['masks'].numel(), different


def test_mask_rcnn_equals_the_detectron2_transcription(d2_tiny):
    from mmdet.structures import DetDataSample
    sd, _, converted = d2_tiny
    image = normalised_image(64, 96)
    ref = d2_mask_rcnn_inference(sd, 'tiny', image)
    # The premise: tens of detections, and no class score within float rounding of 0.05.
    assert 20 <= len(ref['scores']) < 100
    assert (ref['class_scores'] - 0.05).abs().min() > 1e-6
    model = build_converted('configs/mask_rcnn_restv2_t_release_test.py', converted)
    # The proposals first (RPN anchors, deltas, per-level top-k, NMS, clipping) ...
    sample = DetDataSample(metainfo=dict(img_shape=(64, 96), ori_shape=(64, 96),
                                         scale_factor=(1., 1.)))

    def proposals():
        with torch.no_grad():
            return model.rpn_head.predict(model.extract_feat(image), [sample], rescale=False)[0]

    ours = proposals().bboxes
    assert len(ours) == len(ref['proposals'])
    torch.testing.assert_close(ours, ref['proposals'], rtol=1e-4, atol=1e-3)
    # ... then the detections with their masks.
    assert_same_detections(mmdet_predict(model, image), ref)
    # Control: the output norms matter, so a converter that dropped them would fail above.
    for i in range(4):
        torch.nn.init.ones_(getattr(model.backbone, f'norm{i}').weight)
        torch.nn.init.zeros_(getattr(model.backbone, f'norm{i}').bias)
    without_norms = proposals().bboxes
    assert without_norms.shape != ref['proposals'].shape or \
        (without_norms - ref['proposals']).abs().max() > 1.


def reference_upernet_logits(sd, image):
    """The release's backbone (transcription + channels-first output norms ``norm_k``), then
    MMSegmentation's UPerHead and FCNHead with the release's settings, loaded from the file."""
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS

    from reference_d2_mask_rcnn import channels_first_layer_norm
    models_registry('mmseg')
    official = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
    maps = reference_forward(official, 'tiny', image)
    feats = [channels_first_layer_norm(m, official[f'norm_{k}.weight'], official[f'norm_{k}.bias'])
             for k, m in enumerate(maps, start=1)]
    norm_cfg = dict(type='BN', requires_grad=True)
    heads = {
        'decode_head': dict(type='UPerHead', in_channels=[96, 192, 384, 768], in_index=[0, 1, 2, 3],
                            pool_scales=(1, 2, 3, 6), channels=512, dropout_ratio=0.1,
                            num_classes=150, norm_cfg=norm_cfg, align_corners=False),
        'auxiliary_head': dict(type='FCNHead', in_channels=384, in_index=2, channels=256,
                               num_convs=1, concat_input=False, dropout_ratio=0.1,
                               num_classes=150, norm_cfg=norm_cfg, align_corners=False),
    }
    logits = {}
    for name, cfg in heads.items():
        head = revert_sync_batchnorm(MODELS.build(cfg)).eval()
        head.load_state_dict({k[len(name) + 1:]: v for k, v in sd.items()
                              if k.startswith(name + '.')}, strict=True)
        with torch.no_grad():
            logits[name] = head(feats)
    return logits


def converted_upernet_logits(model, image):
    with torch.no_grad():
        feats = model.extract_feat(image)
        return {'decode_head': model.decode_head(feats),
                'auxiliary_head': model.auxiliary_head(feats)}


def test_upernet_equals_reference_backbone_then_mmseg_heads(mmseg_tiny):
    sd, _, converted = mmseg_tiny
    image = normalised_image(64, 96, seed=1)
    model = build_converted('configs/upernet_restv2_t_release_test.py', converted)
    ref, ours = reference_upernet_logits(sd, image), converted_upernet_logits(model, image)
    for name, stride in (('decode_head', 4), ('auxiliary_head', 16)):
        assert ours[name].shape == ref[name].shape == (1, 150, 64 // stride, 96 // stride)
        scale = ref[name].abs().max().item()
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-4, atol=1e-4 * scale)
    # Control: without the release's output norms the logits are far off.
    for i in range(4):
        torch.nn.init.ones_(getattr(model.backbone, f'norm{i}').weight)
        torch.nn.init.zeros_(getattr(model.backbone, f'norm{i}').bias)
    changed = converted_upernet_logits(model, image)['decode_head']
    assert (changed - ref['decode_head']).abs().max() > 1e-2 * ref['decode_head'].abs().max()


# ----------------------------------------------------------------------------- errors
def test_named_errors_and_nothing_written(tmp_path, d2_tiny, mmseg_tiny):
    d2, d2_path, _ = d2_tiny
    seg_path = mmseg_tiny[1]
    dst = str(tmp_path / 'out.pth')

    def expect(error, match, src, config=None):
        with pytest.raises(error, match=match):
            convert_checkpoint(src, dst, config=config)
        assert not osp.exists(dst)

    def variant(name, state_dict):
        folder = tmp_path / name
        folder.mkdir()
        return write(str(folder), 'd2_v0.6', state_dict)

    expect(ResTv1CheckpointError, r'ResTv1 model, not ResTv2.*attn\.transform_conv.*ResTv1-S',
           variant('v1', restv1_like(d2)))
    expect(ArchMismatchError, r'ResTv2-T \(tiny\), but --config configs/mask_rcnn_restv2_s_'
           r"release_test\.py builds ResTv2 arch 'small'", d2_path,
           release_test_config('d2', 'small'))
    expect(TaskMismatchError, r'is a detection model, but --config configs/upernet_restv2_t_release'
           r'_test\.py is an MMSegmentation', d2_path, release_test_config('mmseg', 'tiny'))
    expect(TaskMismatchError, r'is a segmentation model, .*Use configs/upernet_restv2_t_release',
           seg_path, release_test_config('d2', 'tiny'))
    expect(UnknownKeysError, r'roi_heads\.keypoint_head\.score_lowres\.weight',
           variant('unknown', {**d2, 'roi_heads.keypoint_head.score_lowres.weight': torch.ones(1)}))
    missing = {k: v for k, v in d2.items() if k != 'roi_heads.mask_head.mask_fcn3.bias'}
    expect(TensorCountError, r'holds 319 tensors, a released ResTv2-T Detectron2 Mask R-CNN FPN '
           r'holds 320.*1 missing: roi_head\.mask_head\.convs\.2\.conv\.bias',
           variant('missing', missing))
    coco91 = {'roi_heads.box_predictor.cls_score.weight': torch.ones(91, 1024),
              'roi_heads.box_predictor.cls_score.bias': torch.ones(91)}
    expect(ModelMismatchError, r'the model of configs/mask_rcnn_restv2_t_release_test\.py \(strict '
           r'load\): 2 shape mismatch: roi_head\.bbox_head\.fc_cls\.weight: file \(91, 1024\) vs '
           r'model \(81, 1024\)', variant('coco91', {**d2, **coco91}))


def test_backbone_init_cfg_on_a_released_file_says_to_convert_it(d2_tiny):
    from mmdet.registry import MODELS
    backbone = MODELS.build(dict(type='ResTv2', arch='tiny',
                                 init_cfg=dict(type='Pretrained', checkpoint=d2_tiny[1])))
    with pytest.raises(ValueError, match=r"released Detectron2 Mask R-CNN FPN checkpoints.*"
                                         r"tools/convert_official\.py"):
        backbone.init_weights()
    converted = MODELS.build(dict(type='ResTv2', arch='tiny',
                                  init_cfg=dict(type='Pretrained', checkpoint=d2_tiny[2])))
    converted.init_weights()  # the converted file's backbone part
    assert torch.equal(converted.norm3.bias, d2_tiny[0]['backbone.bottom_up.norm_4.0.bias'])


def test_bad_files_are_named(tmp_path, d2_tiny):
    dst = str(tmp_path / 'out.pth')
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(open(d2_tiny[1], 'rb').read()[:100_000])
    pkl = tmp_path / 'model_final.pkl'
    write_d2_pkl(str(pkl), {k: v for k, v in list(d2_tiny[0].items())[:5]})
    truncated_pkl = tmp_path / 'truncated.pkl'
    truncated_pkl.write_bytes(pkl.read_bytes()[:3000])
    page = tmp_path / 'download.pth'
    page.write_text('<!DOCTYPE html><html>Baidu Pan: enter the access code</html>')
    for path, words in ((truncated, 'is truncated or corrupt'), (truncated_pkl, 'is truncated'),
                        (page, 'is not a PyTorch checkpoint .*HTML'),
                        (tmp_path / 'missing.pth', None)):
        error = FileNotFoundError if words is None else CheckpointFileError
        with pytest.raises(error, match=f'{path}' + (f' {words}' if words else ' does not exist')):
            convert_checkpoint(str(path), dst)
        assert not osp.exists(dst)


def test_code_in_a_downloaded_file_never_runs(tmp_path, d2_tiny):
    marker = tmp_path / 'pwned'

    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {marker}', )

    evil_pkl = tmp_path / 'model_final.pkl'
    with open(evil_pkl, 'wb') as f:
        pickle.dump({'model': {'w': np.ones(2)}, '__author__': Payload()}, f, protocol=2)
    with pytest.raises(CheckpointFileError, match=r'(posix|os)\.system is not allowed'):
        read_checkpoint(str(evil_pkl))
    evil_pth = tmp_path / 'model_final.pth'
    torch.save({'model': d2_tiny[0], 'trainer': {'hooks': Payload()}}, evil_pth)
    with pytest.raises(RuntimeError, match='Weights only load failed'):
        read_checkpoint(str(evil_pth))
    assert not marker.exists()


def test_d2_pickle_of_python2_era_arrays_reads(tmp_path):
    """Protocol 2 (Detectron2's model zoo): bytes through _codecs.encode, latin1 strings."""
    arrays = {'a': np.arange(6, dtype=np.float32).reshape(2, 3), 'n': np.array(7, dtype=np.int64)}
    path = tmp_path / 'x.pkl'
    with open(path, 'wb') as f:
        pickle.dump({'model': arrays, '__author__': 'Detectron2 Model Zoo'}, f, protocol=2)
    data = read_checkpoint(str(path))
    assert np.array_equal(data['model']['a'], arrays['a']) and int(data['model']['n']) == 7


# ----------------------------------------------------------------------------- styles, classifier
def test_window_style_targets_warn_and_cwin_gets_identity_convs(tmp_path, d2_tiny):
    cwin_path = str(tmp_path / 'cwin.pth')
    report = convert_checkpoint(d2_tiny[1], cwin_path, config='configs/mask_rcnn_restv2_t_cwin.py')
    assert report.config == 'configs/mask_rcnn_restv2_t_cwin.py'
    assert any("'cwin' attention" in w and 'trained with Global attention' in w
               for w in report.warnings)
    assert any('8 CWin cross-window conv tensors are not in the release' in w
               for w in report.warnings)
    convs = [v for k, v in load_converted(cwin_path)['state_dict'].items()
             if '.cross_window_conv.' in k]
    assert len(convs) == 8 and not any(v.any() for v in convs)
    build_converted('configs/mask_rcnn_restv2_t_cwin.py', cwin_path)  # strict


def test_default_configs_are_accepted_without_warning(d2_tiny, tmp_path):
    report = convert_checkpoint(d2_tiny[1], str(tmp_path / 'o.pth'),
                                config=osp.join(REPO, 'configs/mask_rcnn_restv2_t.py'))
    assert report.config == 'configs/mask_rcnn_restv2_t.py' and not report.warnings


def test_imagenet_file_is_still_backbone_weights_and_checked_against_config(tmp_path):
    from reference_restv2 import random_official_state_dict
    src = tmp_path / 'restv2_tiny_224.pth'
    torch.save({'model': random_official_state_dict('tiny')}, src)
    report = convert_checkpoint(str(src), str(tmp_path / 'out.pth'))
    assert report.task == 'backbone' and report.arch == 'tiny' and report.tensors == 270
    assert 'dataset_meta' not in load_converted(tmp_path / 'out.pth')['meta']
    with pytest.raises(ArchMismatchError, match=r"ResTv2-T \(tiny\), but --config "
                       r"configs/upernet_restv2_b_release_test\.py builds ResTv2 arch 'base'"):
        convert_checkpoint(str(src), str(tmp_path / 'out2.pth'),
                           config=release_test_config('mmseg', 'base'))


# ----------------------------------------------------------------------------- pipelines
@pytest.fixture(scope='module')
def tiny_ade(tmp_path_factory):
    from restv2_mm.datasets.tiny_ade20k import make_tiny_ade20k
    root = str(tmp_path_factory.mktemp('ade') / 'data')
    make_tiny_ade20k(root, num_train=1, num_val=2, seed=3)
    return root


def seg_dataset(root, pipeline):
    from mmseg.registry import DATASETS
    models_registry('mmseg')
    dataset = config(release_test_config('mmseg', 'tiny')).test_dataloader.dataset
    return DATASETS.build(dict(dataset, data_root=root, pipeline=pipeline))


def label_shape(sample):
    return tuple(np.array(Image.open(sample['data_samples'].seg_map_path)).shape)


def test_release_test_pipelines_keep_the_ground_truth_size(tiny_ade):
    cfg = config(release_test_config('mmseg', 'tiny'))
    single = seg_dataset(tiny_ade, cfg.test_dataloader.dataset.pipeline)
    for sample in single:
        height, width = sample['inputs'].shape[-2:]
        assert height % 32 == 0 and width % 32 == 0 and min(height, width) in (512, 544)
        assert tuple(sample['data_samples'].gt_sem_seg.data.shape[-2:]) == label_shape(sample)
        assert all(side % 32 for side in label_shape(sample))  # the tiny set: never aligned
    tta = seg_dataset(tiny_ade, cfg.tta_pipeline)
    sample = tta[0]
    assert len(sample['inputs']) == 12  # 6 scales x 2 flips
    for inputs, data_sample in zip(sample['inputs'], sample['data_samples']):
        assert inputs.shape[-2] % 32 == 0 and inputs.shape[-1] % 32 == 0
        assert tuple(data_sample.gt_sem_seg.data.shape[-2:]) == tuple(data_sample.ori_shape)
    # Control: aligning after LoadAnnotations would resize the ground truth too.
    pipeline = list(cfg.test_dataloader.dataset.pipeline)
    pipeline[2], pipeline[3] = pipeline[3], pipeline[2]
    wrong = seg_dataset(tiny_ade, pipeline)[0]
    assert tuple(wrong['data_samples'].gt_sem_seg.data.shape[-2:]) != label_shape(wrong)


def detectron2_resized_size(height, width, short=800, max_size=1333):
    """Detectron2's ResizeShortestEdge.get_output_shape (augmentation_impl.py)."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def test_detectron2_test_pipeline_decodes_and_resizes_like_detectron2(tmp_path):
    from mmcv.transforms import Compose
    from mmdet.registry import TRANSFORMS  # noqa: F401  (mmdet's transforms registered)
    models_registry('mmdet')
    cfg = config(release_test_config('d2', 'tiny'))
    load_and_resize = Compose(cfg.test_dataloader.dataset.pipeline[:2])
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    for (height, width), name, extra in (((480, 640), 'a.jpg', {}), ((300, 1000), 'b.png', {}),
                                         ((427, 640), 'c.jpg', {'exif': exif})):
        path = str(tmp_path / name)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, **extra)
        # Detectron2: PIL decode, EXIF transpose, RGB; shortest edge 800 / max 1333; PIL bilinear.
        image = ImageOps.exif_transpose(Image.open(path)).convert('RGB')
        size = detectron2_resized_size(image.height, image.width)
        expected = np.asarray(image.resize((size[1], size[0]), Image.BILINEAR))[..., ::-1]  # BGR
        result = load_and_resize(dict(img_path=path))
        assert result['img'].shape[:2] == size
        assert np.array_equal(result['img'], expected), name


# ----------------------------------------------------------------------------- command line
TINY_RUNS = {  # kind: (tiny quick-start config, a metric tools/test.py prints)
    'd2_pkl': ('configs/mask_rcnn_restv2_t_tiny_coco.py', 'coco/segm_mAP'),
    'mmseg0': ('configs/upernet_restv2_t_tiny_ade20k.py', 'mIoU'),
}


@pytest.mark.slow  # two tool processes each
@pytest.mark.parametrize('kind', sorted(TINY_RUNS))
def test_command_line_then_tools_test_on_the_tiny_sets(tmp_path, kind):
    """As docs/released-models.md says: convert a released file, then tools/test.py on the tiny
    set with the converted checkpoint (the quick-start configs build the T networks); here on
    four of the set's images (random heads give up to 100 detections per image)."""
    tiny_config, metric = TINY_RUNS[kind]
    task = 'd2' if kind == 'd2_pkl' else 'mmseg'
    sd = random_d2_state_dict('tiny') if task == 'd2' else random_mmseg_state_dict('tiny')
    src, dst = write(str(tmp_path), kind, sd), tmp_path / 'converted.pth'
    out = run_tool('convert_official.py', src, dst)
    layout = 'Detectron2 Mask R-CNN FPN' if task == 'd2' else 'MMSegmentation 0.x UperNet'
    assert f'found {src}: {layout} with a ResTv2-T backbone' in out
    assert f'for {release_test_config(task, "tiny")} (checked: strict load into its model)' in out
    tensors = (D2_TENSORS if task == 'd2' else MMSEG_TENSORS)['tiny']
    assert f'wrote {dst}: {tensors} tensors' in out
    out = run_tool('test.py', osp.join(REPO, tiny_config), dst, '--work-dir', tmp_path / 'work',
                   '--cfg-options', 'test_dataloader.dataset.indices=4',
                   cwd=tmp_path)  # the tiny set is written to tmp_path/data on the way
    assert metric in out and 'do not match exactly' not in out, out[-3000:]
