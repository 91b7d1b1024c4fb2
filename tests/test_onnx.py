"""ONNX export (restv2_mm.deploy, tools/deployment/export_onnx.py) against PyTorch in ONNX Runtime.

One export per style at one size must give PyTorch's maps at other sizes and batches: odd sizes,
maps that need window padding and maps smaller than their window.
"""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from restv2_mm.deploy import (DynamicAdaptiveAvgPool2d, build_restv2_model, compare_with_torch,
                              export_backbone_onnx, export_config, export_onnx, ort_session,
                              verify_onnx)
from restv2_mm.models import EMSAv2, ResTv2

# Small enough to export in seconds; windows chosen so that at the sizes below some stages pad
# to whole windows and some maps are smaller than their window (one window of the map's size).
ARCH = dict(embed_dims=(32, 64, 96, 128), depths=(1, 2, 2, 2), num_heads=(1, 2, 2, 4))
WINDOWS = (8, 6, 8, 2)
EXPORT_SHAPE = (96, 128)
CHECK_INPUTS = ((1, 75, 99), (2, 130, 70))  # (batch, H, W): odd, and not multiples of 32/windows
TOL = 1e-4


def small_backbone(style: str) -> ResTv2:
    torch.manual_seed(0)
    model = ResTv2(ARCH, attn_style=style, window_size=WINDOWS)
    model.init_weights()
    for m in model.modules():  # CWin's convs start at zero: make them count
        if type(m).__name__ == 'ResidualDWConv':
            nn.init.normal_(m.conv.weight, std=0.1)
    return model.eval()


@pytest.mark.parametrize('style,opset', [('global', 17), ('win', 17), ('cwin', 14), ('hwin', 11)])
def test_every_style_exports_with_dynamic_axes(tmp_path, style, opset):
    import onnx
    model = small_backbone(style)
    path = export_backbone_onnx(model, str(tmp_path / f'{style}.onnx'), shape=EXPORT_SHAPE,
                                opset=opset)
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ['input']
    assert [o.name for o in graph.output] == ['out0', 'out1', 'out2', 'out3']
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3], f'batch/H/W not dynamic: {dims}'
    session = ort_session(path, threads=1)
    for batch, h, w in CHECK_INPUTS:
        x = torch.randn(batch, 3, h, w)
        diffs = compare_with_torch(model, session, x)
        assert diffs['max'] < TOL, (style, (batch, h, w), diffs)


@pytest.mark.parametrize('sr_ratio,window', [(4, 8), (2, 6), (1, 2), (8, 5)])
def test_any_size_path_equals_forward(sr_ratio, window):
    """The path recorded into the graph computes forward's numbers at every size, including the
    "window larger than the map" case and maps that need padding."""
    torch.manual_seed(0)
    attn = EMSAv2(32, num_heads=2, sr_ratio=sr_ratio, window_size=window).eval()
    with torch.no_grad():
        for h, w in ((3, 4), (5, 13), (8, 8), (17, 11), (1, 9), (24, 30)):
            x = torch.randn(2, h, w, 32)
            torch.testing.assert_close(attn.forward_any_size(x), attn(x), rtol=0, atol=1e-5)


def test_adaptive_pool_replacement_is_exact():
    torch.manual_seed(0)
    for scale in (1, 2, 3, 6):
        for h, w in ((6, 6), (7, 13), (16, 5), (32, 25)):
            x = torch.randn(2, 4, h, w)
            torch.testing.assert_close(DynamicAdaptiveAvgPool2d(scale)(x),
                                       nn.AdaptiveAvgPool2d(scale)(x), rtol=0, atol=1e-6)


def test_upernet_segmentor_exports_and_matches(tmp_path):
    """UperNet-T (PPM pooling and all): logits at the input size, right at an unseen size."""
    from restv2_mm.deploy import SegmentorLogits, exportable_module
    model, scope = build_restv2_model('configs/upernet_restv2_t.py')
    assert scope == 'mmseg'
    segmentor = exportable_module(model, scope)
    assert isinstance(segmentor, SegmentorLogits)
    x = torch.randn(1, 3, 75, 53)
    with torch.no_grad():  # the wrapper is mmseg's own whole-image inference
        expected = model.encode_decode(x, [dict(img_shape=(75, 53))])
        torch.testing.assert_close(segmentor(x), expected)
    assert expected.shape == (1, 150, 75, 53)
    path = export_onnx(segmentor, str(tmp_path / 'upernet.onnx'), shape=(64, 96))
    diffs = verify_onnx(segmentor, path, (75, 53), batch=1, log=lambda m: None)
    assert diffs['max'] < TOL, diffs


class _BakesItsInputWidth(nn.Module):
    """Exports, but turns the width into a constant of the graph (a Python float)."""

    def forward(self, x):
        return x * float(x.shape[-1])


def test_check_fails_loudly_on_a_size_baked_graph(tmp_path):
    path = export_onnx(_BakesItsInputWidth(), str(tmp_path / 'baked.onnx'), shape=(8, 8))
    verify_onnx(_BakesItsInputWidth(), path, (8, 8), log=lambda m: None)  # right at its size
    with pytest.raises(RuntimeError, match='differs from PyTorch'):
        verify_onnx(_BakesItsInputWidth(), path, (8, 9), log=lambda m: None)


def test_bad_inputs_get_clear_errors(tmp_path):
    out = str(tmp_path / 'x.onnx')
    for opset in (9, 21, '17'):
        with pytest.raises(ValueError, match=r'opset must be an int in \[11, 20\]'):
            export_backbone_onnx(nn.Identity(), out, opset=opset)
    cfg = tmp_path / 'resnet_seg.py'
    cfg.write_text("_base_ = ['mmseg::_base_/models/upernet_r50.py']\ndefault_scope = 'mmseg'\n")
    with pytest.raises(ValueError, match="not 'ResTv2'"):
        export_config(str(cfg), out)
    with pytest.raises(ValueError, match='opset >= 16'):  # the whole detector: RoiAlign
        export_config('configs/mask_rcnn_restv2_t.py', out, opset=14)
    with pytest.raises(ValueError, match='--with-neck goes with --backbone-only'):
        export_config('configs/upernet_restv2_t.py', out, with_neck=True)
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        export_config('configs/upernet_restv2_t.py', out, checkpoint=str(tmp_path / 'no.pth'))


def test_checkpoint_loads_through_the_training_loader(tmp_path):
    """A saved mm checkpoint (with mmengine's HistoryBuffer in it, as training writes) loads
    with weights_only through restv2_mm's allow-list, and the export carries its weights."""
    from mmengine.logging import HistoryBuffer
    model, _ = build_restv2_model('configs/mask_rcnn_restv2_t.py')
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = tmp_path / 'trained.pth'
    loss = HistoryBuffer()
    loss.update(0.5)
    torch.save({'state_dict': state, 'message_hub': {'log_scalars': {'loss': loss}}}, ckpt)
    loaded, _ = build_restv2_model('configs/mask_rcnn_restv2_t.py', checkpoint=str(ckpt))
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, state[k])


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    """The tool: Mask R-CNN's backbone + FPN (5 levels), checked by ORT at an unseen size."""
    out = tmp_path / 'fpn.onnx'
    cmd = [sys.executable, 'tools/deployment/export_onnx.py', 'configs/mask_rcnn_restv2_t.py',
           '--out', str(out), '--backbone-only', '--with-neck', '--shape', '96', '128',
           '--cfg-options', 'model.backbone.attn_style=hwin']
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'RANDOM weights' in run.stdout
    assert 'max abs diff' in run.stdout and out.is_file()
    import onnx
    assert [o.name for o in onnx.load(str(out)).graph.output] == [f'out{i}' for i in range(5)]

    bad = subprocess.run(cmd[:-2] + ['--opset', '9'], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and 'opset must be an int in [11, 20]' in bad.stderr
