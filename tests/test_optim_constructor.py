"""ResTv2LearningRateDecayOptimizerConstructor: the released S/B UperNet lr-decay recipe.

Real models from the repository's configs, real mmengine optim wrappers and schedulers.
"""
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

import restv2_mm  # noqa: F401
from restv2_mm.optim import ResTv2LearningRateDecayOptimizerConstructor, find_restv2_backbone

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
UPERNET_T = osp.join(REPO, 'configs', 'upernet_restv2_t.py')
MASK_RCNN_T = osp.join(REPO, 'configs', 'mask_rcnn_restv2_t.py')
NAME = 'ResTv2LearningRateDecayOptimizerConstructor'
BASE_LR, WD = 1.5e-4, 0.05


def optim_cfg(**paramwise):
    return dict(type='OptimWrapper', constructor=NAME,
                optimizer=dict(type='AdamW', lr=BASE_LR, betas=(0.9, 0.999), weight_decay=WD),
                paramwise_cfg=paramwise)


@pytest.fixture(scope='module')
def upernet_t_cwin():
    """configs/upernet_restv2_t.py with the CWin style (so stages carry cross_window_conv)."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(UPERNET_T)
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.attn_style = 'cwin'
    return MODELS.build(cfg.model)


@pytest.fixture
def mmseg_scope():
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)


def lr_and_decay(optimizer):
    """id(param) -> (lr, weight_decay); each parameter must be in exactly one group."""
    table = {}
    for group in optimizer.param_groups:
        for param in group['params']:
            assert id(param) not in table
            table[id(param)] = (group['lr'], group['weight_decay'])
    return table


def test_registered_once_in_both_libraries():
    from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS as DET
    from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS as SEG
    assert DET.get(NAME) is SEG.get(NAME) is ResTv2LearningRateDecayOptimizerConstructor
    assert restv2_mm.registry.register_optim_constructor() == ['mmdet', 'mmseg']  # idempotent


def test_stage_wise_lr_per_part(upernet_t_cwin, mmseg_scope):
    model = upernet_t_cwin
    optimizer = build_optim_wrapper(model, optim_cfg(
        decay_rate=0.9, decay_type='stage_wise', num_layers=(1, 2, 6, 2))).optimizer
    table = lr_and_decay(optimizer)
    assert len(table) == len(list(model.parameters()))

    def lr_scale(module):
        scales = {round(table[id(p)][0] / BASE_LR, 12) for p in module.parameters()}
        assert len(scales) == 1, scales
        return scales.pop()

    backbone = model.backbone
    # Stem and every patch embedding: layer 0 of 5; stage i's blocks and CWin conv: i + 1;
    # output norms and both heads: the base lr.
    assert lr_scale(backbone.stem) == round(0.9**5, 12)
    for i, stage in enumerate(backbone.stages):
        if i > 0:
            assert lr_scale(stage.downsample) == round(0.9**5, 12)
        assert lr_scale(stage.blocks) == round(0.9**(4 - i), 12)
        assert lr_scale(stage.cross_window_conv) == round(0.9**(4 - i), 12)
        assert lr_scale(getattr(backbone, f'norm{i}')) == 1
    assert lr_scale(model.decode_head) == lr_scale(model.auxiliary_head) == 1
    assert len({lr for lr, _ in table.values()}) == 6


def test_layer_wise_one_lr_per_block(upernet_t_cwin, mmseg_scope):
    model = upernet_t_cwin
    optimizer = build_optim_wrapper(
        model, optim_cfg(decay_rate=0.8, decay_type='layer_wise')).optimizer
    table = lr_and_decay(optimizer)
    last = 1 + 2 + 6 + 2 + 1  # stem 0, blocks 1..11, the rest 12

    def layer(param):
        exponent = torch.log(torch.tensor(table[id(param)][0] / BASE_LR)) / torch.log(
            torch.tensor(0.8))
        return last - round(exponent.item())

    backbone = model.backbone
    assert {layer(p) for p in backbone.stem.parameters()} == {0}
    block_layers = [{layer(p) for p in block.parameters()} for stage in backbone.stages
                    for block in stage.blocks]
    assert block_layers == [{i} for i in range(1, 12)]
    # Patch embedding i goes with stage i's first block, the CWin conv with its last block.
    assert {layer(p) for p in backbone.stages[2].downsample.parameters()} == {4}
    assert {layer(p) for p in backbone.stages[2].cross_window_conv.parameters()} == {9}
    assert {layer(p) for p in model.decode_head.parameters()} == {last}
    assert {layer(p) for p in backbone.norm3.parameters()} == {last}


def test_no_decay_on_norms_biases_and_all_1d_params(upernet_t_cwin, mmseg_scope):
    model = upernet_t_cwin
    table = lr_and_decay(build_optim_wrapper(model, optim_cfg(
        decay_rate=0.9, decay_type='stage_wise')).optimizer)
    for name, param in model.named_parameters():
        expected = 0. if param.ndim == 1 else WD
        assert table[id(param)][1] == expected, name
    params = dict(model.named_parameters())
    assert table[id(params['backbone.stem.pos.pa_conv.bias'])][1] == 0  # a bias
    assert table[id(params['backbone.stem.pos.pa_conv.weight'])][1] == WD
    assert table[id(params['backbone.stages.0.blocks.0.norm1.weight'])][1] == 0
    assert table[id(params['decode_head.bottleneck.bn.weight'])][1] == 0


def test_num_layers_derived_when_omitted_and_checked_when_given(upernet_t_cwin, mmseg_scope):
    model = upernet_t_cwin
    groups = [build_optim_wrapper(model, optim_cfg(
        decay_rate=0.9, decay_type='stage_wise', **extra)).optimizer.param_groups
        for extra in ({}, dict(num_layers=(1, 2, 6, 2)), dict(num_layers=[1, 2, 6, 2]))]
    summary = [[(g['group_name'], g['lr'], g['weight_decay'], len(g['params'])) for g in gs]
               for gs in groups]
    assert summary[0] == summary[1] == summary[2]
    with pytest.raises(ValueError, match=r'num_layers=\(1, 2, 12, 2\).*\(1, 2, 6, 2\)'):
        build_optim_wrapper(model, optim_cfg(decay_rate=0.9, decay_type='stage_wise',
                                             num_layers=(1, 2, 12, 2)))
    with pytest.raises(TypeError, match='block counts per stage'):
        build_optim_wrapper(model, optim_cfg(decay_rate=0.9, decay_type='stage_wise',
                                             num_layers=12))


@pytest.mark.parametrize('paramwise, error, message', [
    (dict(decay_rate=0.9, decay_type='block_wise'), ValueError, "stage_wise', 'layer_wise"),
    (dict(decay_type='stage_wise'), ValueError, 'decay_rate'),
    (dict(decay_rate=0.9), ValueError, 'decay_type'),
    (dict(decay_rate=1.5, decay_type='stage_wise'), ValueError, r'\(0, 1\]'),
    (dict(decay_rate=0.9, decay_type='stage_wise', norm_decay_mult=0.), ValueError,
     'valid keys'),
])
def test_bad_paramwise_cfg_is_refused_with_the_valid_choices(paramwise, error, message):
    with pytest.raises(error, match=message):
        ResTv2LearningRateDecayOptimizerConstructor(optim_cfg(**paramwise), paramwise)


def test_model_without_restv2_backbone_is_refused(mmseg_scope):
    from mmseg.registry import MODELS

    class ResNetModel(nn.Module):  # any model whose backbone is not a ResTv2

        def __init__(self):
            super().__init__()
            self.backbone = MODELS.build(dict(type='ResNetV1c', depth=18))

    for model, found in ((ResNetModel(), 'ResNetV1c'), (nn.Linear(2, 2), 'no `backbone`')):
        with pytest.raises(TypeError, match=f'backbone` is a ResTv2.*{found}'):
            build_optim_wrapper(model, optim_cfg(decay_rate=0.9, decay_type='stage_wise'))


def test_backbone_found_through_a_tta_wrapper(upernet_t_cwin, mmseg_scope):
    from mmseg.models import SegTTAModel
    wrapped = SegTTAModel(module=upernet_t_cwin)
    assert find_restv2_backbone(wrapped) is upernet_t_cwin.backbone
    cfg = optim_cfg(decay_rate=0.9, decay_type='stage_wise')
    plain = build_optim_wrapper(upernet_t_cwin, cfg).optimizer.param_groups
    via_wrapper = build_optim_wrapper(wrapped, cfg).optimizer.param_groups
    assert [(g['lr'], [id(p) for p in g['params']]) for g in plain] == \
        [(g['lr'], [id(p) for p in g['params']]) for g in via_wrapper]


def test_schedulers_keep_the_ratios_between_layers(upernet_t_cwin, mmseg_scope):
    """The UperNet schedule (linear warm-up, then poly) scales every group's own lr."""
    from mmengine.optim.scheduler import LinearLR, PolyLR
    optimizer = build_optim_wrapper(upernet_t_cwin, optim_cfg(
        decay_rate=0.9, decay_type='stage_wise')).optimizer
    warmup = LinearLR(optimizer, start_factor=1e-6, by_epoch=False, begin=0, end=3)
    poly = PolyLR(optimizer, eta_min=0., power=1., by_epoch=False, begin=3, end=10)
    for _ in range(6):
        optimizer.step()
        warmup.step()
        poly.step()
    for group in optimizer.param_groups:
        assert group['lr'] == pytest.approx(optimizer.param_groups[-1]['lr'] * group['lr_scale'])
    assert 0 < optimizer.param_groups[-1]['lr'] < BASE_LR


def test_usable_from_a_detection_config():
    """mmdet's registry builds it too: Mask R-CNN with layer-wise decay, heads at the base lr."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(MASK_RCNN_T)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    cfg.optim_wrapper = optim_cfg(decay_rate=0.9, decay_type='layer_wise', num_layers=(1, 2, 6, 2))
    table = lr_and_decay(build_optim_wrapper(model, cfg.optim_wrapper).optimizer)
    params = dict(model.named_parameters())
    assert table[id(params['backbone.stem.proj.0.weight'])] == (pytest.approx(BASE_LR * 0.9**12),
                                                                WD)
    assert table[id(params['backbone.stages.3.blocks.1.mlp.fc2.weight'])][0] == \
        pytest.approx(BASE_LR * 0.9)
    assert table[id(params['roi_head.mask_head.conv_logits.weight'])] == (BASE_LR, WD)
    assert table[id(params['neck.fpn_convs.0.conv.bias'])] == (BASE_LR, 0.)
