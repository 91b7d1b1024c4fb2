"""Official ImageNet weights: every layout loads, and the stage maps equal the paper's math."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmdet.registry import MODELS as DET_MODELS

import restv2_mm  # noqa: F401
from reference_restv2 import random_official_state_dict, reference_forward

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
