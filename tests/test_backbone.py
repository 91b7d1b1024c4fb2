"""ResTv2 backbone: registries, shapes in every style, window exactness, training switches, errors."""
import math

import pytest
import torch
from mmengine.config import Config

import restv2_mm  # noqa: F401
from restv2_mm.models import EMSAv2, ResTv2

STYLES = ('global', 'win', 'cwin', 'hwin')


def expected_shapes(arch_dims, H, W):
    return [(c, math.ceil(H / s), math.ceil(W / s)) for c, s in zip(arch_dims, (4, 8, 16, 32))]


def test_one_class_in_both_registries():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    assert DET.get('ResTv2') is ResTv2 and SEG.get('ResTv2') is ResTv2
    assert isinstance(SEG.build(dict(type='ResTv2', arch='tiny')), ResTv2)
    assert set(restv2_mm.REGISTERED_SCOPES) == {'mmdet', 'mmseg'}


def test_custom_imports_in_a_config(tmp_path):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text("custom_imports = dict(imports=['restv2_mm'], allow_failed_imports=False)\n"
                        "backbone = dict(type='ResTv2', arch='small', attn_style='hwin')\n")
    cfg = Config.fromfile(str(cfg_file))
    from mmdet.registry import MODELS
    backbone = MODELS.build(cfg.backbone)
    assert backbone.attn_style == 'hwin' and backbone.depths == (1, 2, 12, 2)


@pytest.mark.parametrize('style', STYLES)
@pytest.mark.parametrize('size', [(333, 517), (97, 131)])
def test_any_size_every_style_forward_backward(style, size):
    H, W = size
    # Small windows put padding in every stage at both sizes.
    # No drop path: a dropped branch (batch of 1) would legitimately get no gradient.
    backbone = ResTv2('tiny', attn_style=style, window_size=(24, 10, 6, 3))
    backbone.init_weights()
    backbone.train()
    outs = backbone(torch.randn(1, 3, H, W))
    assert [tuple(o.shape[1:]) for o in outs] == expected_shapes(backbone.embed_dims, H, W)
    assert all(torch.isfinite(o).all() for o in outs)
    sum(o.square().mean() for o in outs).backward()
    no_grad = [n for n, p in backbone.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not no_grad, f'parameters without gradient: {no_grad[:5]}'


@pytest.mark.parametrize('size', [(512, 683), (800, 1216)])
def test_large_inputs_default_windows(size):
    backbone = ResTv2('tiny', attn_style='win').eval()
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, *size))
    assert [tuple(o.shape[1:]) for o in outs] == expected_shapes(backbone.embed_dims, *size)


def test_window_padding_changes_nothing_real_tokens_see():
    """Win on a padded map == each window cut out and run as a separate (global) image."""
    torch.manual_seed(0)
    ws, C = 6, 32
    attn = EMSAv2(C, num_heads=2, sr_ratio=4, window_size=ws).eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 15, 20, C)
    with torch.no_grad():
        out = attn(x)
        for i in range(0, 15, ws):
            for j in range(0, 20, ws):
                piece = x[:, i:i + ws, j:j + ws]
                torch.testing.assert_close(out[:, i:i + ws, j:j + ws], attn.attend(piece),
                                           rtol=1e-5, atol=1e-5)


def test_windows_larger_than_map_equal_global():
    glob = ResTv2('tiny').eval()
    win = ResTv2('tiny', attn_style='win').eval()
    win.load_state_dict(glob.state_dict())
    x = torch.randn(1, 3, 200, 160)
    with torch.no_grad():
        for a, b in zip(win(x), glob(x)):
            torch.testing.assert_close(a, b)


def test_style_switch_builds_the_papers_layouts():
    ws = (7, 6, 5, 4)
    for style in STYLES:
        b = ResTv2('tiny', attn_style=style, window_size=ws)
        assert b.attn_style == style
        sizes = [[blk.attn.window_size for blk in st.blocks] for st in b.stages]
        has_conv = [st.cross_window_conv is not None for st in b.stages]
        if style == 'global':
            assert sizes == [[None], [None] * 2, [None] * 6, [None] * 2]
        elif style == 'hwin':
            assert sizes == [[None], [6, None], [5] * 5 + [None], [4, None]]
        else:
            assert sizes == [[7], [6] * 2, [5] * 6, [4] * 2]
        assert has_conv == [style == 'cwin'] * 4
    # One attention class does all four styles.
    assert {type(m) for m in ResTv2('tiny', attn_style='hwin').modules()
            if 'attn' in type(m).__name__.lower() or isinstance(m, EMSAv2)} == {EMSAv2}


def test_cwin_adds_only_depthwise_convs():
    n = {s: sum(p.numel() for p in ResTv2('tiny', attn_style=s).parameters()) for s in STYLES}
    assert n['win'] == n['hwin'] == n['global']
    assert n['cwin'] - n['global'] == sum(c * 49 + c for c in (96, 192, 384, 768))


def test_out_indices_and_custom_arch():
    b = ResTv2(dict(embed_dims=(32, 64), depths=(1, 1), num_heads=(1, 2), sr_ratios=(4, 2)),
               out_indices=(1, ))
    outs = b(torch.randn(2, 3, 70, 50))
    assert len(outs) == 1 and outs[0].shape == (2, 64, 9, 7)


def test_frozen_stages_and_norm_eval():
    b = ResTv2('tiny', frozen_stages=2, norm_eval=True)
    b.train()
    frozen = [n for n, p in b.named_parameters() if not p.requires_grad]
    assert all(n.startswith(('stem.', 'stages.0.', 'stages.1.', 'norm0.', 'norm1.'))
               for n in frozen)
    assert any(n.startswith('stages.1.') for n in frozen)
    assert all(p.requires_grad for n, p in b.named_parameters() if n.startswith('stages.2.'))
    assert not b.stem.training and not b.stages[1].training and b.stages[2].training
    assert all(not m.training for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d))
    b0 = ResTv2('tiny', frozen_stages=0)
    b0.train()
    assert {n.split('.')[0] for n, p in b0.named_parameters() if not p.requires_grad} == {'stem'}
    live = ResTv2('tiny')
    live.train()
    assert all(m.training for m in live.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all(p.requires_grad for p in live.parameters())


def test_frozen_weights_do_not_move_in_training():
    b = ResTv2('tiny', frozen_stages=1)
    b.train()
    before = {k: v.clone() for k, v in b.state_dict().items() if k.startswith(('stem.', 'stages.0'))}
    opt = torch.optim.SGD([p for p in b.parameters() if p.requires_grad], lr=0.1)
    sum(o.mean() for o in b(torch.randn(2, 3, 64, 64))).backward()
    opt.step()
    for k, v in before.items():
        torch.testing.assert_close(b.state_dict()[k], v, msg=f'{k} changed')


def test_with_cp_same_outputs_and_grads():
    torch.manual_seed(0)
    plain = ResTv2('tiny', attn_style='hwin', window_size=(8, 4, 4, 2))
    ckpt = ResTv2('tiny', attn_style='hwin', window_size=(8, 4, 4, 2), with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    assert all(blk.with_cp for st in ckpt.stages for blk in st.blocks)
    x = torch.randn(1, 3, 90, 70)
    grads = []
    for m in (plain, ckpt):
        m.eval()  # no drop-path randomness, BN uses running stats
        m.zero_grad()
        outs = m(x)
        sum(o.sum() for o in outs).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('kwargs, match', [
    (dict(arch='huge'), r"arch must be one of \('tiny', 'small', 'base', 'large'\)"),
    (dict(arch=dict(embed_dims=(8, ), depths=(1, ))), 'needs the keys'),
    (dict(attn_style='swin'), r"attn_style must be one of \('global', 'win', 'cwin', 'hwin'\)"),
    (dict(window_size=(7, 7, 7)), 'window_size must be a positive int or 4'),
    (dict(window_size=0), 'window_size must be a positive int'),
    (dict(out_indices=(4, )), 'out_indices'),
    (dict(frozen_stages=7), 'frozen_stages'),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResTv2(**kwargs)


def test_params_of_imagenet_variants_match_table_9():
    # Backbone (no classifier) + its output norms; the classifier adds norm + 1000-class head.
    from reference_restv2 import reference_classifier_params
    for arch, dims in (('tiny', 768), ('small', 768), ('base', 768), ('large', 1024)):
        b = ResTv2(arch, out_indices=(3, ))
        ours = sum(p.numel() for p in b.parameters()) - 2 * dims  # minus norm3
        assert ours + 2 * dims + dims * 1000 + 1000 == reference_classifier_params(arch)
    assert round(reference_classifier_params('tiny') / 1e6, 2) == 30.43
