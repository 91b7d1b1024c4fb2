"""Fourier / CKA analysis (paper Figures 3 and 4) and the image demo."""
import math

import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from PIL import Image

from restv2_mm.analysis import (branch_cka_matrix, build_backbone, builtin_images,
                                collect_block_outputs, collect_branch_outputs,
                                delta_log_amplitude, linear_cka, load_images, preprocess,
                                relative_log_amplitude)
from restv2_mm.analysis.fourier import EPS
from restv2_mm.models.attention import EMSAv2

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_ARCH = dict(embed_dims=(16, 32, 64, 128), depths=(1, 2, 2, 1), num_heads=(1, 2, 2, 4))

TINY_CONFIG = f"""
default_scope = 'mmdet'
custom_imports = dict(imports=['restv2_mm'], allow_failed_imports=False)
model = dict(
    type='RetinaNet',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(type='ResTv2', arch={TINY_ARCH!r}, drop_path_rate=0.1,
                  # never read: the tools ignore init_cfg and load --checkpoint themselves
                  init_cfg=dict(type='Pretrained', checkpoint='no/such/file.pth')))
"""


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / 'tiny_restv2.py'
    path.write_text(TINY_CONFIG)
    return str(path)


def run_tool(*args, timeout=600):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def read_png(path):
    assert osp.isfile(path), f'{path} was not written'
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    return np.asarray(Image.open(path).convert('RGB'))


# ---------------------------------------------------------------------------------- Fourier
def test_fourier_constant_map_is_flat_and_finite():
    c, (H, W) = 3.0, (16, 16)
    values, freqs = relative_log_amplitude(torch.full((2, 4, H, W), c))
    assert torch.isfinite(values).all()
    assert values[0] == 0
    # All the amplitude sits at frequency 0; every other frequency is empty, so the curve is
    # flat over them, at log(eps) - log(|c| H W + eps).
    expected = math.log(EPS) - math.log(c * H * W + EPS)
    torch.testing.assert_close(values[1:], torch.full_like(values[1:], expected))
    assert delta_log_amplitude(values) == pytest.approx(expected)
    torch.testing.assert_close(freqs, torch.linspace(0, 1, H // 2 + 1, dtype=torch.float64))
    # an all-zero map is flat everywhere, frequency 0 included
    zero, _ = relative_log_amplitude(torch.zeros(1, 3, 8, 8))
    assert torch.equal(zero, torch.zeros_like(zero))


def test_fourier_separates_smooth_white_and_checkerboard_maps():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 64, 32, 32, generator=g)
    white, _ = relative_log_amplitude(noise)
    smooth, _ = relative_log_amplitude(F.avg_pool2d(noise, 5, stride=1, padding=2))
    checker = (-1.) ** (torch.arange(32)[:, None] + torch.arange(32)[None, :])
    high, _ = relative_log_amplitude(checker + 0.05 * noise)
    assert abs(delta_log_amplitude(white)) < 0.2 and white.abs().max() < 0.6  # flat spectrum
    assert delta_log_amplitude(smooth) < -2  # low-pass
    assert delta_log_amplitude(high) > 2  # all energy at pi
    # channels_last gives the same curve
    same, _ = relative_log_amplitude(noise.permute(0, 2, 3, 1), channels_last=True)
    torch.testing.assert_close(same, white)


def test_fourier_reads_the_half_diagonal_at_the_right_frequencies():
    N, k = 16, 3
    i = torch.arange(N, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * k * (i[:, None] + i[None, :]) / N)  # energy at +-(k, k)
    values, freqs = relative_log_amplitude(wave[None, None] + 1.0)
    assert int(values[1:].argmax()) + 1 == k
    assert freqs[k] == pytest.approx(2 * k / N)
    # odd maps (a 7 x 7 stage-4 map at 224) end just short of pi
    _, freqs7 = relative_log_amplitude(torch.randn(1, 2, 7, 7))
    torch.testing.assert_close(freqs7, torch.tensor([0, 2 / 7, 4 / 7, 6 / 7], dtype=torch.float64))
    # a non-square map steps both axes to their own Nyquist frequency
    values_r, freqs_r = relative_log_amplitude(torch.randn(1, 2, 8, 16))
    assert len(values_r) == 5 and freqs_r[-1] == 1.0


# ---------------------------------------------------------------------------------- CKA
def test_linear_cka_self_is_one_and_independent_is_near_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 16, generator=g)
    y = torch.randn(20000, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    for debiased in (False, True):
        assert linear_cka(x, x, debiased) == pytest.approx(1.0, abs=1e-9)
        # invariant to orthogonal transforms and isotropic scaling
        assert linear_cka(x, 5 * x.double() @ q, debiased) == pytest.approx(1.0, abs=1e-9)
        assert abs(linear_cka(x, y, debiased)) < 0.01
    # partly shared signal lies in between
    mid = linear_cka(x, x + 1.5 * y)
    assert 0.2 < mid < 0.5
    # a constant representation carries no similarity structure
    assert linear_cka(x, torch.ones(20000, 3)) == 0.0
    with pytest.raises(ValueError, match='same samples'):
        linear_cka(x, y[:10])


def test_debiased_cka_removes_the_few_samples_bias():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(200, 100, generator=g), torch.randn(200, 100, generator=g)
    assert linear_cka(x, y) > 0.25  # ~ sqrt(pq / ((n + p)(n + q))) = 1/3
    assert abs(linear_cka(x, y, debiased=True)) < 0.05


def test_branch_cka_matrix_compares_stages_on_the_coarser_grid():
    g = torch.Generator().manual_seed(0)
    fine = torch.randn(4, 8, 8, 8, generator=g)
    branches = {
        'a': dict(up=fine, attn=torch.randn(4, 8, 8, 8, generator=g), com=fine * 2 + 1),
        # the same signal, pooled to the next stage's resolution
        'b': dict(up=F.avg_pool2d(fine, 2), attn=torch.randn(4, 16, 4, 4, generator=g),
                  com=torch.randn(4, 16, 4, 4, generator=g)),
    }
    matrix, labels = branch_cka_matrix(branches, max_samples=10000)
    assert labels == ['b1.up', 'b2.up', 'b1.attn', 'b2.attn', 'b1.com', 'b2.com']
    assert torch.allclose(matrix, matrix.T)
    torch.testing.assert_close(matrix.diag(), torch.ones(6, dtype=torch.float64))
    assert matrix[0, 1] == pytest.approx(1.0)  # a fine map against its own pooled copy
    assert matrix[0, 4] == pytest.approx(1.0)  # up vs com = 2 up + 1
    assert matrix[0, 2] < 0.2 and matrix[1, 3] < 0.5  # independent noise (few samples)


# ---------------------------------------------------------------------------------- hooks
def _tiny_backbone(style='global', **kwargs):
    cfg = Config(dict(default_scope='mmdet', model=dict(backbone=dict(
        type='ResTv2', arch=TINY_ARCH, attn_style=style, **kwargs))))
    return build_backbone(cfg)


@pytest.mark.parametrize('style', ['global', 'win', 'hwin'])
def test_branch_hooks_rebuild_the_attention_output(style):
    # 40 x 36 input: stage maps 10x9, 5x5, 3x3, 2x2; windows of 4/2/2/1 tokens need padding
    model, cfg = _tiny_backbone(style, window_size=(4, 2, 2, 1))
    x = torch.randn(2, 3, 40, 36)
    outputs = {}
    handles = [m.register_forward_hook(
        lambda m, i, o, name=name: outputs.__setitem__(name, o))
        for name, m in model.named_modules() if isinstance(m, EMSAv2)]
    branches = collect_branch_outputs(model, x)
    for h in handles:
        h.remove()
    assert list(branches) == list(outputs) and len(branches) == sum(TINY_ARCH['depths'])
    modules = dict(model.named_modules())
    for name, b in branches.items():
        out = outputs[name]  # (B, H, W, C)
        assert b['up'].shape == b['com'].shape == out.permute(0, 3, 1, 2).shape
        torch.testing.assert_close(b['attn'], b['com'] - b['up'])
        with torch.no_grad():
            rebuilt = modules[name].proj(b['com'].permute(0, 2, 3, 1))
        torch.testing.assert_close(rebuilt, out, atol=1e-5, rtol=1e-4)
    blocks = collect_block_outputs(model, x)
    assert [tuple(v.shape) for v in blocks.values()] == [
        (2, 16, 10, 9), (2, 32, 5, 5), (2, 32, 5, 5), (2, 64, 3, 3), (2, 64, 3, 3), (2, 128, 2, 2)]


def test_build_backbone_loads_a_detector_checkpoint(tmp_path, tiny_config):
    torch.manual_seed(1)
    source, _ = build_backbone(tiny_config)
    ckpt = tmp_path / 'det.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()},
                'meta': {}}, ckpt)
    torch.manual_seed(2)
    loaded, cfg = build_backbone(tiny_config, str(ckpt))
    random, _ = build_backbone(tiny_config)
    assert not loaded.training
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert not torch.equal(random.state_dict()['stem.proj.0.weight'],
                           source.state_dict()['stem.proj.0.weight'])


def test_preprocess_follows_the_config_channel_order():
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 255  # pure red
    rgb = Config(dict(model=dict(data_preprocessor=dict(mean=[0, 0, 0], std=[1, 1, 1],
                                                        bgr_to_rgb=True))))
    bgr = Config(dict(model=dict(data_preprocessor=dict(mean=[0, 0, 0], std=[1, 1, 1]))))
    assert preprocess([img], rgb)[0, :, 0, 0].tolist() == [255, 0, 0]
    assert preprocess([img], bgr)[0, :, 0, 0].tolist() == [0, 0, 255]


def test_builtin_images_are_deterministic(tmp_path):
    a, b = builtin_images(10, 48), builtin_images(10, 48)
    assert len(a) == 10 and all(i.shape == (48, 48, 3) and i.dtype == np.uint8 for i in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len({x.tobytes() for x in a}) == 10  # all different
    Image.fromarray(a[0]).save(tmp_path / 'b.png')
    Image.fromarray(a[1]).save(tmp_path / 'a.jpg')
    (tmp_path / 'notes.txt').write_text('not an image')
    loaded = load_images(str(tmp_path), size=32)
    assert len(loaded) == 2 and loaded[0].shape == (32, 32, 3)
    with pytest.raises(FileNotFoundError):
        load_images(str(tmp_path / 'missing'))


# ---------------------------------------------------------------------------------- tools
@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / 'images'
    d.mkdir()
    for i, img in enumerate(builtin_images(2, 96)):
        Image.fromarray(img).save(d / f'{i}.png')
    return str(d)


def test_fourier_tool_writes_a_png(tmp_path, tiny_config, image_dir):
    torch.manual_seed(0)
    model, _ = build_backbone(tiny_config)
    ckpt = tmp_path / 'backbone.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    out = tmp_path / 'figs' / 'fourier.png'
    stdout = run_tool('tools/analysis/fourier.py', tiny_config, '--checkpoint', str(ckpt),
                      '--images', image_dir, '--img-size', '64', '--out', str(out))
    img = read_png(str(out))
    assert img.shape[1] >= 1000 and img.shape[0] >= 400
    assert img.std() > 10  # not a blank canvas
    # one line per block
    assert sum(line.startswith('s') and 'delta log amplitude' in line
               for line in stdout.splitlines()) == sum(TINY_ARCH['depths'])
    title = next(line for line in stdout.splitlines() if line.startswith('title: '))
    assert 'tiny_restv2.py' in title and 'checkpoint backbone.pth' in title
    assert '2 images from' in title and 'random' not in title


def test_cka_tool_writes_a_png(tmp_path, tiny_config):
    out = tmp_path / 'cka.png'
    stdout = run_tool('tools/analysis/cka.py', tiny_config, '--num-images', '2', '--img-size',
                      '64', '--max-samples', '512', '--out', str(out))
    img = read_png(str(out))
    assert img.shape[1] >= 1000 and img.shape[0] >= 500
    assert img.std() > 10
    assert sum(line.startswith('b') and 'CKA(up, com)' in line
               for line in stdout.splitlines()) == sum(TINY_ARCH['depths'])
    title = next(line for line in stdout.splitlines() if line.startswith('title: '))
    assert 'tiny_restv2.py' in title and 'randomly initialised' in title
    assert '2 images from built-in image set' in title


# ---------------------------------------------------------------------------------- demo
def _save_model_checkpoint(config, scope, path):
    import restv2_mm  # noqa: F401
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    if scope == 'mmdet':
        from mmdet.evaluation import get_classes
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules()
        meta = dict(classes=tuple(get_classes('coco')))
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import get_classes, get_palette, register_all_modules
        register_all_modules()
        meta = dict(classes=tuple(get_classes('ade20k')), palette=get_palette('ade20k'))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': meta}}, path)


@pytest.mark.slow
@pytest.mark.parametrize('config,scope', [('configs/mask_rcnn_restv2_t.py', 'mmdet'),
                                          ('configs/upernet_restv2_t.py', 'mmseg')])
def test_demo_draws_on_the_image(tmp_path, config, scope):
    ckpt = tmp_path / f'{scope}.pth'
    _save_model_checkpoint(osp.join(ROOT, config), scope, ckpt)
    image = tmp_path / 'input.png'
    img = builtin_images(1, 160)[0][:, :128]  # 160 high, 128 wide
    Image.fromarray(img).save(image)
    out = tmp_path / 'out' / 'demo.png'
    # random weights score every box ~1/81: zero thresholds (the demo's and the RoI head's 0.05)
    # make the detector draw its boxes
    # The config's own test pipeline, its resize cut to 320 px: the drawing is what is tested
    # here, and the full 1333x800 / 2048x512 forward on a CPU cost most of this test's time.
    stdout = run_tool('tools/demo.py', str(image), config, str(ckpt), '--out', str(out),
                      '--score-thr', '0', '--device', 'cpu',
                      '--cfg-options', 'test_dataloader.dataset.pipeline.1.scale=(320,320)',
                      *(['model.test_cfg.rcnn.score_thr=0'] if scope == 'mmdet' else []))
    assert 'wrote' in stdout
    drawn = read_png(str(out))
    assert drawn.shape == img.shape
    changed = np.abs(drawn.astype(int) - img.astype(int)).max(-1) > 30
    assert changed.mean() > 0.01, f'only {changed.mean():.2%} of the pixels were drawn on'
