"""The stock FLOP tools count EMSAv2's attention once ``restv2_mm`` is imported.

``import restv2_mm`` adds a handle for ``aten::scaled_dot_product_attention`` to mmengine's
default FlopAnalyzer ops, so MMSegmentation's own ``tools/analysis_tools/get_flops.py``
(shipped inside the pip package under ``mmseg/.mim/tools``) reports Table 5's FLOPs for our
configs: the configs' ``custom_imports`` import restv2_mm.
"""
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.analysis import FlopAnalyzer, get_model_complexity_info

import restv2_mm  # noqa: F401
from restv2_mm.utils.flops import count_sdpa_in_flop_analyzers, sdpa_flop_jit

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


class _Attention(nn.Module):
    """SDPA of (B, heads, N, d) queries over n keys and values of (B, heads, n, d_v)."""

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_plain_flop_analyzer_counts_sdpa_after_import():
    q, k, v = torch.rand(2, 3, 7, 8), torch.rand(2, 3, 5, 8), torch.rand(2, 3, 5, 4)
    expected = 2 * 3 * 7 * 5 * (8 + 4)  # q k^T plus attn v, one multiply-add = one FLOP
    analyzer = FlopAnalyzer(_Attention(), (q, k, v))
    assert analyzer.total() == expected
    assert analyzer.by_operator() == {'scaled_dot_product_attention': expected}
    assert get_model_complexity_info(_Attention(), inputs=(q, k, v))['flops'] == expected


def test_sdpa_handle_is_registered_once_and_kept():
    from mmengine.analysis import complexity_analysis
    ops = complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS
    count_sdpa_in_flop_analyzers()
    count_sdpa_in_flop_analyzers()
    assert ops['aten::scaled_dot_product_attention'] is sdpa_flop_jit
    assert sum(name == 'aten::scaled_dot_product_attention' for name in ops) == 1


def test_restv2_attention_is_counted_by_a_plain_analyzer():
    """ResTv2-T's attention products all show up in a stock FlopAnalyzer's count, whether the
    traced EMSAv2 records them as SDPA or as explicit matmuls."""
    from restv2_mm.models import ResTv2
    backbone = ResTv2(arch='tiny').eval()
    analyzer = FlopAnalyzer(backbone, torch.rand(1, 3, 64, 64))
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    # Stage i: (64 / 4 / 2^i)^2 queries over ceil(side / sr_i)^2 keys, q k^T and attn v each
    # C_i multiply-adds per query-key pair (summed over the heads).
    expected = 0
    for i, depth in enumerate(backbone.depths):
        side = 16 >> i
        keys = (-(-side // backbone.sr_ratios[i]))**2
        expected += depth * side * side * keys * 2 * backbone.embed_dims[i]
    by_operator = analyzer.by_operator()
    assert by_operator['scaled_dot_product_attention'] + by_operator['matmul'] == expected


def _mmseg_get_flops_tool():
    import mmseg
    tool = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'analysis_tools',
                    'get_flops.py')
    if not osp.isfile(tool):
        pytest.skip(f'mmseg ships no get_flops.py at {tool}')
    return tool


# mmseg 1.2.2's get_flops.py passes both `input_shape` and `inputs` to mmengine's
# get_model_complexity_info, which mmengine >= 0.8 refuses ("cannot be both set";
# open-mmlab/mmsegmentation#2958, #3241), so the shipped tool fails for every model. Upstream
# fixed it by passing no input_shape (open-mmlab/mmsegmentation#3551, after 1.2.2). This runs
# the shipped file unchanged with that one fix applied to the function it imports; restv2_mm
# is NOT imported here: the config's custom_imports brings it in, as for any user.
_RUN_WITH_UPSTREAM_FIX = """
import runpy, sys
import mmengine.analysis as analysis
stock = analysis.get_model_complexity_info
def fixed(model, input_shape=None, inputs=None, **kwargs):
    return stock(model, None if inputs is not None else input_shape, inputs=inputs, **kwargs)
analysis.get_model_complexity_info = fixed
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.mark.slow
def test_mmseg_own_get_flops_gives_table5_for_upernet_restv2_t():
    """MMSegmentation's own tool: ~977G at 2048x512 (Table 5) instead of 930G without SDPA."""
    result = subprocess.run(
        [sys.executable, '-c', _RUN_WITH_UPSTREAM_FIX, _mmseg_get_flops_tool(),
         osp.join('configs', 'upernet_restv2_t.py'), '--shape', '512', '2048'],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Input shape: (512, 2048)' in result.stdout, result.stdout
    # mmengine's _format_size prints 3 decimals in the largest unit: '0.978T'.
    match = re.search(r'Flops: ([\d.]+)([GT])', result.stdout)
    assert match, result.stdout
    gflops = float(match.group(1)) * (1000 if match.group(2) == 'T' else 1)
    assert abs(gflops / 977 - 1) < 0.01, result.stdout
