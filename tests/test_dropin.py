"""The drop-in helper, the docs that come from it, and the errors met on the way.

docs/drop-in.md's table and per-family configs must be exactly what
``restv2_mm.utils.dropin`` writes (the matrix in tests/test_dropin_matrix.py builds and runs those
configs), so the docs cannot drift from what works.
"""
import os.path as osp
import re
import subprocess
import sys

import pytest
from mmengine.config import Config

import restv2_mm  # noqa: F401
from restv2_mm.models import ResTv2
from restv2_mm.utils.dropin import (FAMILIES, FAMILY_BY_KEY, check_dropin, dropin_config_text,
                                    dropin_overrides, markdown_table, restv2_channels)
from subprocess_tools import run_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DOC = osp.join(REPO, 'docs', 'drop-in.md')
SNIPPET = re.compile(r'<!-- dropin: (\w+) -->\n```python\n(.*?)```', re.S)


@pytest.fixture(scope='module')
def doc():
    with open(DOC) as f:
        return f.read()


@pytest.fixture(scope='module')
def family_configs(tmp_path_factory):
    """key -> path of the family's drop-in config, written as a user keeps it."""
    folder = tmp_path_factory.mktemp('dropin')
    paths = {}
    for family in FAMILIES:
        paths[family.key] = str(folder / f'{family.key}_restv2_t.py')
        with open(paths[family.key], 'w') as f:
            f.write(dropin_config_text(family.base))
    return paths


def test_docs_snippets_are_the_helpers_configs(doc):
    snippets = dict(SNIPPET.findall(doc))
    assert list(snippets) == [f.key for f in FAMILIES], 'one snippet per family, in table order'
    for family in FAMILIES:
        expected = dropin_config_text(family.base)
        assert snippets[family.key] == expected, \
            f'docs/drop-in.md, {family.name}: write\n{expected}'


def test_docs_table_is_the_helpers(doc):
    table = markdown_table()
    assert table in doc, f'docs/drop-in.md: the table must read\n{table}'
    for family in FAMILIES:  # every family the matrix covers has its row
        assert f'| {family.name} |' in table


def test_every_config_named_in_the_docs_exists(doc):
    for config in re.findall(r'`(configs/[\w./-]+\.py)`', doc):
        assert osp.isfile(osp.join(REPO, config)), config
    for tool in re.findall(r'python (tools/[\w./-]+\.py)', doc):
        assert osp.isfile(osp.join(REPO, tool)), tool


def test_family_configs_are_ordinary_configs():
    """Plain fields over the library config (tests/test_dropin_matrix.py reads and runs them)."""
    for family in FAMILIES:
        text = dropin_config_text(family.base)
        assert text.startswith(f"_base_ = '{family.base}'\n")
        assert not re.search(r'^\s*(import|from) ', text, re.M)  # no code, only fields
        assert "custom_imports = dict(imports=[" in text and "'restv2_mm'], " in text
        assert "backbone=dict(\n        _delete_=True,\n        type='ResTv2'," in text


def test_channels_follow_the_arch():
    assert restv2_channels('tiny') == [96, 192, 384, 768]
    assert restv2_channels('large', (1, 3)) == [256, 1024]
    overrides, _ = dropin_overrides(FAMILY_BY_KEY['upernet'].base, arch='large')
    assert overrides['decode_head']['in_channels'] == [128, 256, 512, 1024]
    assert overrides['auxiliary_head']['in_channels'] == 512
    assert overrides['backbone']['init_cfg']['checkpoint'] == 'checkpoints/restv2_large_224.pth'


def test_only_the_read_stages_are_returned():
    """A returned map nothing reads would leave its output norm without gradient (DDP fails)."""
    fcn, _ = dropin_overrides(FAMILY_BY_KEY['fcn'].base)
    assert fcn['backbone']['out_indices'] == (2, 3)
    assert fcn['decode_head'] == dict(in_channels=768, in_index=1)
    assert fcn['auxiliary_head'] == dict(in_channels=384, in_index=0)
    deeplab, _ = dropin_overrides(FAMILY_BY_KEY['deeplabv3plus'].base)
    assert deeplab['backbone']['out_indices'] == (0, 2, 3)
    assert deeplab['decode_head'] == dict(in_channels=768, c1_in_channels=96, in_index=2)
    retina, _ = dropin_overrides(FAMILY_BY_KEY['retinanet'].base)
    assert retina['backbone']['out_indices'] == (1, 2, 3)
    assert retina['neck'] == dict(in_channels=[192, 384, 768], start_level=0)


def test_base_specific_lines():
    fcos, _ = dropin_overrides(FAMILY_BY_KEY['fcos'].base)  # Caffe BGR normalisation in the base
    assert fcos['data_preprocessor'] == dict(mean=[123.675, 116.28, 103.53],
                                             std=[58.395, 57.12, 57.375], bgr_to_rgb=True)
    _, top = dropin_overrides(FAMILY_BY_KEY['mask2former'].base)
    assert top['custom_imports']['imports'] == ['mmdet.models', 'restv2_mm']
    segformer, _ = dropin_overrides(FAMILY_BY_KEY['segformer'].base)
    assert 'pretrained' not in segformer  # its base has model.pretrained=None already


def check_error(cfg):
    with pytest.raises(ValueError) as info:
        check_dropin(cfg)
    return str(info.value)


def test_check_refuses_channel_mismatches(family_configs):
    cfg = Config.fromfile(family_configs['faster_rcnn'])
    cfg.model.neck.in_channels = [256, 512, 1024, 2048]  # the base config's, left in
    assert 'model.neck.in_channels=[256, 512, 1024, 2048]: write in_channels=[96, 192, 384, ' \
           '768]' in check_error(cfg)
    cfg = Config.fromfile(family_configs['retinanet'])
    cfg.model.backbone.out_indices = (0, 1, 2, 3)  # changed without the neck
    message = check_error(cfg)
    assert "ResTv2(arch='tiny', out_indices=(0, 1, 2, 3)) returns maps of [96, 192, 384, 768]" \
        in message
    assert 'write in_channels=[96, 192, 384, 768]' in message
    cfg = Config.fromfile(family_configs['deeplabv3plus'])
    cfg.model.decode_head.c1_in_channels = 256
    assert 'model.decode_head.c1_in_channels=256: write c1_in_channels=96' in check_error(cfg)
    cfg = Config.fromfile(family_configs['fcn'])
    cfg.model.decode_head.in_index = 3
    assert 'model.decode_head.in_index=3 picks maps the backbone does not return (it returns 2)' \
        in check_error(cfg)


def test_check_refuses_maps_nothing_reads(family_configs):
    cfg = Config.fromfile(family_configs['fcn'])
    cfg.merge_from_dict({'model.backbone.out_indices': (0, 1, 2, 3),
                         'model.decode_head.in_index': 3, 'model.auxiliary_head.in_index': 2})
    assert 'no neck or head reads stage(s) [0, 1]' in check_error(cfg)
    assert 'out_indices=(2, 3)' in check_error(cfg)


def test_unknown_heads_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"is a 'DAHead'; the drop-in helper knows FPN, "):
        dropin_overrides('mmseg::danet/danet_r50-d8_4xb4-80k_ade20k-512x512.py')


def test_tool_writes_and_checks(tmp_path):
    out = tmp_path / 'deeplab.py'
    base = FAMILY_BY_KEY['deeplabv3plus'].base
    run_tool('dropin_config.py', base, '--out', out)
    assert out.read_text() == dropin_config_text(base)
    check_dropin(str(out))  # what --check runs
    out.write_text(out.read_text().replace('c1_in_channels=96', 'c1_in_channels=256'))
    proc = subprocess.run([sys.executable, 'tools/dropin_config.py', '--check', str(out)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    assert 'model.decode_head.c1_in_channels=256: write c1_in_channels=96' in proc.stderr


# ------------------------------------------------------------------ ResTv2's own arguments
@pytest.mark.parametrize('out_indices, why', [
    ((0, 1, 2, 4), r'got \(0, 1, 2, 4\)'),
    ((3, 1), r'got \(3, 1\)'),
    ((1, 1), r'got \(1, 1\)'),
    ((), r'got \(\)'),
    (3, 'got 3'),
])
def test_out_indices_outside_the_stages_are_refused_with_the_range(out_indices, why):
    with pytest.raises(ValueError) as info:
        ResTv2('tiny', out_indices=out_indices)
    message = str(info.value)
    assert re.search(why, message)
    assert 'increasing stage indices from (0, 1, 2, 3)' in message
    assert 'stage 0: 96 channels at stride 4, 1: 192 channels at stride 8' in message


@pytest.mark.parametrize('frozen_stages', [5, -2, 1.5])
def test_frozen_stages_beyond_the_depth_are_refused_with_the_range(frozen_stages):
    with pytest.raises(ValueError, match=r'frozen_stages must be an int in \[-1, 4\] .*this arch '
                                         r'has 4 stages\), got ' + re.escape(repr(frozen_stages))):
        ResTv2('tiny', frozen_stages=frozen_stages)


def test_resnet_arguments_left_by_a_base_config_point_at_delete(tmp_path):
    """`type='ResTv2'` without `_delete_=True` keeps the base ResNet's arguments."""
    from mmdet.registry import MODELS
    path = tmp_path / 'no_delete.py'
    path.write_text(dropin_config_text(FAMILY_BY_KEY['faster_rcnn'].base, checkpoint='')
                    .replace('        _delete_=True,\n', ''))
    cfg = Config.fromfile(str(path))
    with pytest.raises(TypeError) as info:
        MODELS.build(cfg.model.backbone)
    message = str(info.value)
    assert 'ResTv2 has no argument depth, norm_cfg, num_stages, style. ' in message
    assert 'add `_delete_=True` to model.backbone' in message
    assert "ResTv2's arguments: arch, attn_style, window_size" in message
