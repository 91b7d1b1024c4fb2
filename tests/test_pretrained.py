"""Official ImageNet weights: every layout loads, and the stage maps equal the paper's math."""
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from mmdet.registry import MODELS as DET_MODELS
from mmengine.config import Config
from mmseg.registry import MODELS as SEG_MODELS

import restv2_mm  # noqa: F401
from reference_restv2 import random_official_state_dict, reference_forward
from restv2_mm.utils import check_pretrained_weights
from restv2_mm.utils.dropin import FAMILY_BY_KEY, dropin_config_text

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {
    'model_key': lambda sd: {'model': sd},
    'module_prefix': lambda sd: {'model': {'module.' + k: v for k, v in sd.items()}},
    'bare': lambda sd: sd,
}


def build(arch, checkpoint, **kwargs):
    backbone = DET_MODELS.build(dict(type='ResTv2', arch=arch, **kwargs,
                                     init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint))))
    backbone.init_weights()
    return backbone.eval()


def stage_maps_before_output_norms(backbone, x):
    """Our stage maps without the downstream LayerNorms (compared against the official net)."""
    outs = []
    t = backbone.stem(x)
    for stage in backbone.stages:
        t = stage(t)
        outs.append(t.permute(0, 3, 1, 2))
    return outs


def save_official(arch, folder):
    """Random official weights of ``arch`` saved in every layout: (arch, state dict, paths)."""
    sd = random_official_state_dict(arch, seed=1)
    paths = {}
    for name, wrap in LAYOUTS.items():
        paths[name] = folder / f'{name}.pth'
        torch.save(wrap(sd), paths[name])
    return arch, sd, paths


@pytest.fixture(scope='module', params=['tiny', 'large'])
def official(request, tmp_path_factory):
    return save_official(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope='module')
def official_tiny(tmp_path_factory):
    return save_official('tiny', tmp_path_factory.mktemp('tiny'))


@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_global_matches_plain_transcription(official, layout):
    arch, sd, paths = official
    backbone = build(arch, paths[layout])
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = stage_maps_before_output_norms(backbone, x)
        ref = reference_forward(sd, arch, x)
        final = backbone(x)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item(),
                                   msg=lambda m: f'stage {i}: {m}')
    # Output norms start at identity parameters: they normalise the same maps.
    for a, b in zip(final, ref):
        expected = torch.nn.functional.layer_norm(b.permute(0, 2, 3, 1), b.shape[1:2], eps=1e-6)
        torch.testing.assert_close(a, expected.permute(0, 3, 1, 2), rtol=1e-4, atol=1e-4)


def test_non_multiple_size_matches_transcription(official_tiny):
    arch, sd, paths = official_tiny
    backbone = build(arch, paths['bare'])
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        for a, b in zip(stage_maps_before_output_norms(backbone, x), reference_forward(sd, arch, x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


@pytest.mark.parametrize('style', ['win', 'cwin', 'hwin'])
def test_window_styles_load_the_same_weights(official_tiny, style):
    arch, sd, paths = official_tiny
    backbone = build(arch, paths['model_key'], attn_style=style)
    glob = build(arch, paths['model_key'])
    # At 224 every stage fits in its window, so a fresh CWin/Win/HWin equals Global exactly.
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for a, b in zip(backbone(x), glob(x)):
            torch.testing.assert_close(a, b)
    if style == 'cwin':
        for stage in backbone.stages:
            assert not stage.cross_window_conv.conv.weight.any()


def test_convert_official_tool_writes_loadable_copy(official_tiny, tmp_path):
    arch, sd, paths = official_tiny
    dst = tmp_path / 'converted.pth'
    subprocess.run([sys.executable, str(ROOT / 'tools' / 'convert_official.py'),
                    str(paths['module_prefix']), str(dst)], check=True, cwd=ROOT)
    ckpt = torch.load(dst, weights_only=True)
    keys = set(ckpt['state_dict'])
    assert 'stages.2.blocks.5.attn.sr.weight' in keys and 'stages.1.downsample.proj.weight' in keys
    assert not any(k.startswith(('norm.', 'head.', 'module.', 'stage1.')) for k in keys)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(build(arch, dst)(x), build(arch, paths['bare'])(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_wrong_arch_checkpoint_names_offending_keys(tmp_path):
    path = tmp_path / 'large.pth'
    torch.save({'model': random_official_state_dict('large')}, path)
    with pytest.raises(RuntimeError, match=r'shape mismatch: \[.stem\.proj\.0\.weight'):
        build('tiny', path)


def test_missing_tensors_are_named(tmp_path):
    sd = random_official_state_dict('tiny')
    del sd['stage3.4.attn.kv.weight']
    path = tmp_path / 'partial.pth'
    torch.save({'model': sd}, path)
    with pytest.raises(RuntimeError, match=r"missing: \['stages\.2\.blocks\.4\.attn\.kv\.weight'\]"):
        build('tiny', path)


def test_classifier_keys_are_dropped_silently(tmp_path):
    sd = random_official_state_dict('tiny')
    assert 'head.weight' in sd and 'norm.weight' in sd
    path = tmp_path / 'full.pth'
    torch.save(sd, path)
    build('tiny', path)  # no error


def test_pickled_code_is_refused(tmp_path):
    """Checkpoints are loaded with weights_only=True: arbitrary objects do not unpickle."""
    sd = random_official_state_dict('tiny')
    path = tmp_path / 'evil.pth'
    torch.save({'model': sd, 'payload': Path('x')}, path)
    with pytest.raises(Exception, match='Weights only load failed'):
        build('tiny', path)


def test_missing_pretrained_file_explains_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match='convert_official.py'):
        build('tiny', tmp_path / 'nope.pth')


# ------------------------------------------------------------------------------------------------
# mm's `pretrained` convention (issue 24): None is fine; ResTv2 weights are the deprecated alias of
# init_cfg (one warning); another network's weights, usually a ResNet's `model.pretrained`
# inherited from a base config and passed on by MMSegmentation's EncoderDecoder, are refused with
# where the value came from and what to write, before anything is loaded or downloaded.
# ------------------------------------------------------------------------------------------------
DEPRECATED = 'is deprecated (as in mmdet/mmseg backbones)'


def build_with_warnings(**kwargs):
    """(backbone, the warnings its construction gave)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        backbone = DET_MODELS.build(dict(type='ResTv2', arch='tiny', **kwargs))
    return backbone, [w for w in caught if issubclass(w.category, FutureWarning)]


def deeplab_dropin_cfg(tmp_path, **model_options):
    """The docs' DeepLabV3+ drop-in config (inherits MMSegmentation's R-50 ADE20K config)."""
    path = tmp_path / 'deeplabv3plus_restv2_t.py'
    path.write_text(dropin_config_text(FAMILY_BY_KEY['deeplabv3plus'].base, checkpoint=''))
    cfg = Config.fromfile(str(path))
    cfg.merge_from_dict({f'model.{k}': v for k, v in model_options.items()})
    return cfg


@pytest.fixture
def no_checkpoint_loading(monkeypatch):
    """Fail the test if ResTv2 tries to read any checkpoint (file or download)."""
    def refuse(path, *args, **kwargs):
        raise AssertionError(f'{path} was loaded')
    monkeypatch.setattr('restv2_mm.models.restv2.load_checkpoint_file', refuse)


def test_pretrained_none_is_plain_init():
    backbone, deprecations = build_with_warnings(pretrained=None)
    assert deprecations == [] and backbone.init_cfg is None


def test_pretrained_path_is_the_init_cfg_alias_with_one_warning(official_tiny):
    arch, sd, paths = official_tiny
    backbone, deprecations = build_with_warnings(pretrained=str(paths['model_key']))
    assert len(deprecations) == 1 and DEPRECATED in str(deprecations[0].message)
    assert "init_cfg=dict(type='Pretrained'" in str(deprecations[0].message)
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=str(paths['model_key']))
    backbone.init_weights()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(backbone.eval()(x), build(arch, paths['model_key'])(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_encoder_decoder_hands_model_pretrained_to_restv2(official_tiny, tmp_path):
    """The release's `--options model.pretrained=ResTv2_tiny_224.pth`, in MMSegmentation 1.x."""
    _, sd, paths = official_tiny
    cfg = deeplab_dropin_cfg(tmp_path, pretrained=str(paths['bare']))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        segmentor = SEG_MODELS.build(cfg.model)
    assert sum(DEPRECATED in str(w.message) for w in caught) == 1
    segmentor.init_weights()
    torch.testing.assert_close(segmentor.backbone.stages[1].blocks[1].attn.kv.weight,
                               sd['stage2.1.attn.kv.weight'])


def test_inherited_resnet_pretrained_is_refused_before_loading(tmp_path, no_checkpoint_loading):
    # The docs' config without its `pretrained=None` line: the R-50 base config's value arrives.
    text = dropin_config_text(FAMILY_BY_KEY['deeplabv3plus'].base)
    assert '    pretrained=None,\n' in text
    path = tmp_path / 'forgot_pretrained.py'
    path.write_text(text.replace('    pretrained=None,\n', ''))
    cfg = Config.fromfile(str(path))
    assert cfg.model.pretrained == 'open-mmlab://resnet50_v1c'
    with pytest.raises(ValueError) as info:
        SEG_MODELS.build(cfg.model)
    message = str(info.value)
    for part in ("`pretrained` (model.pretrained, which MMSegmentation's EncoderDecoder passes to "
                 "the backbone, or model.backbone.pretrained)='open-mmlab://resnet50_v1c'",
                 "MMCV's model zoo, which has no ResTv2", 'set `pretrained=None`',
                 '--cfg-options model.pretrained=None', "init_cfg=dict(type='Pretrained'",
                 'Nothing was downloaded'):
        assert part in message, message


@pytest.mark.parametrize('name, zoo', [
    ('open-mmlab://resnet101_v1c', "MMCV's model zoo"),
    ('torchvision://resnet50', "torchvision's model zoo"),
    ('mmcls://mobilenet_v2', "MMClassification's model zoo"),
    ('https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b0.pth',
     'the OpenMMLab model zoo'),
    ('https://download.pytorch.org/models/resnet50-19c8e357.pth', "torchvision's model zoo"),
])
def test_model_zoo_weights_are_refused_by_name(name, zoo, no_checkpoint_loading):
    with pytest.raises(ValueError, match=re.escape(zoo) + ', which has no ResTv2'):
        build_with_warnings(pretrained=name)
    with pytest.raises(ValueError, match=r"model\.backbone\.init_cfg\.checkpoint="):
        build_with_warnings(init_cfg=dict(type='Pretrained', checkpoint=name))


def test_another_networks_file_is_refused_with_its_keys(tmp_path):
    path = tmp_path / 'resnet50_v1c.pth'
    torch.save({'state_dict': {'stem.0.weight': torch.zeros(32, 3, 3, 3),
                               'layer1.0.conv1.weight': torch.zeros(64, 64, 1, 1)}}, path)
    backbone, _ = build_with_warnings(pretrained=str(path))
    with pytest.raises(ValueError) as info:
        backbone.init_weights()
    message = str(info.value)
    assert 'none of its tensors is a ResTv2 one; its first keys are stem.0.weight, ' \
           'layer1.0.conv1.weight' in message and 'set `pretrained=None`' in message


def test_pretrained_and_init_cfg_together_are_refused(official_tiny):
    path = str(official_tiny[2]['bare'])
    with pytest.raises(ValueError, match='give the weights once'):
        build_with_warnings(pretrained=path, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(TypeError, match=r'pretrained must be a checkpoint path \(str\) or None'):
        build_with_warnings(pretrained=dict(checkpoint=path))


def test_missing_pretrained_file_names_the_field(tmp_path):
    backbone, _ = build_with_warnings(pretrained=str(tmp_path / 'ResTv2_tiny_224.pth'))
    with pytest.raises(FileNotFoundError) as info:
        backbone.init_weights()
    assert 'model.pretrained, which' in str(info.value)
    assert '`model.pretrained=None`' in str(info.value)


def test_tools_check_model_pretrained_before_building(tmp_path):
    """tools/train.py's check names the exact field (model.pretrained) before anything runs."""
    cfg = deeplab_dropin_cfg(tmp_path, pretrained='open-mmlab://resnet50_v1c')
    with pytest.raises(ValueError, match=r"ResTv2 got model\.pretrained='open-mmlab://"):
        check_pretrained_weights(cfg)
    cfg = deeplab_dropin_cfg(tmp_path, pretrained=str(tmp_path / 'nope.pth'))
    with pytest.raises(FileNotFoundError, match=r'\(model\.pretrained\)'):
        check_pretrained_weights(cfg)
    check_pretrained_weights(deeplab_dropin_cfg(tmp_path))  # the docs' config: no weights named
