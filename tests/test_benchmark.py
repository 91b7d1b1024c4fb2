"""tools/benchmark.py runs end to end on tiny shapes, and the plain EMSAv2 path it times as the
baseline computes the same function as the fast one. No timing is asserted anywhere."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import restv2_mm  # noqa: F401
from restv2_mm.models import EMSAv2, ResTv2
from restv2_mm.models.reference import PlainEMSAv2, to_plain

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('style, window_size', [('global', None), ('win', (24, 10, 6, 3)),
                                                ('hwin', (24, 10, 6, 3))])
def test_plain_path_matches_fast_path(style, window_size):
    torch.manual_seed(0)
    fast = ResTv2('tiny', attn_style=style, window_size=window_size)
    fast.init_weights()
    fast.eval()
    plain = to_plain(fast)
    assert plain.state_dict().keys() == fast.state_dict().keys()
    assert {type(m) for m in plain.modules() if isinstance(m, EMSAv2)} == {PlainEMSAv2}
    assert {type(m) for m in fast.modules() if isinstance(m, EMSAv2)} == {EMSAv2}
    x = torch.randn(1, 3, 97, 131)  # padding in every stage for the window styles
    with torch.no_grad():
        for a, b in zip(fast(x), plain(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_plain_attend_with_key_mask_matches_fast():
    torch.manual_seed(0)
    attn = EMSAv2(32, num_heads=2, sr_ratio=2).eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    plain = to_plain(attn)
    x = torch.randn(3, 8, 6, 32)
    key_valid = torch.rand(3, 4, 3) > 0.3
    key_valid[:, 0, 0] = True
    with torch.no_grad():
        torch.testing.assert_close(plain.attend(x, key_valid), attn.attend(x, key_valid),
                                   rtol=1e-5, atol=1e-5)


def test_benchmark_smoke_json(tmp_path):
    out = tmp_path / 'bench.json'
    cmd = [sys.executable, str(ROOT / 'tools' / 'benchmark.py'), '--shape', '64', '64',
           '--warmup', '1', '--iters', '2', '--threads', '1', '--modes', 'infer', 'mem-train',
           '--models', 'restv2', 'restv2-plain', 'swin-t', '--quiet', '--json', str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '| candidate' in proc.stdout  # the table is printed too
    report = json.loads(out.read_text())
    assert set(report) >= {'environment', 'settings', 'results', 'ratios', 'max_abs_diff'}
    assert report['environment']['threads'] == 1
    assert report['settings']['shape'] == [64, 64] and report['settings']['baseline'] == 'swin-t'
    assert report['settings']['malloc'] == 'cached' and 'malloc=cached' in proc.stdout
    rows = {r['name']: r for r in report['results']}
    assert set(rows) == {'restv2', 'restv2-plain', 'swin-t'}
    for row in rows.values():
        assert len(row['infer']['times_ms']) == 2
        assert row['infer']['median_ms'] > 0 and row['infer']['img_per_s'] > 0
        assert row['mem-train']['peak_mib'] > 0
    for mode in ('infer', 'mem-train'):
        ratios = report['ratios'][mode]
        assert set(ratios) == {'restv2/swin-t', 'restv2-plain/swin-t', 'restv2/restv2-plain'}
        value = 'median_ms' if mode == 'infer' else 'peak_mib'
        assert ratios['restv2/swin-t'] == pytest.approx(
            rows['restv2'][mode][value] / rows['swin-t'][mode][value])
    assert report['max_abs_diff']['restv2/restv2-plain'] < 1e-3


def test_candidates_resolve_names_aliases_and_configs():
    from restv2_mm.benchmark import resolve_candidates
    cands = resolve_candidates(['restv2', 'restv2-plain', 'upernet-swin-t', 'swin-t-onnx',
                                'configs/upernet_restv2_t.py'], styles=['global', 'win'])
    assert [c.name for c in cands] == ['restv2-global', 'restv2-win', 'restv2-plain-global',
                                       'restv2-plain-win', 'upernet-swin-t', 'swin-t-onnx',
                                       'upernet_restv2_t']
    assert cands[5].onnx and cands[5].config.startswith('mmdet::swin/')
    assert cands[2].plain and cands[1].style == 'win'
    with pytest.raises(ValueError, match="unknown candidate 'resnet'.*swin-t"):
        resolve_candidates(['resnet'])
    with pytest.raises(FileNotFoundError, match='configs/nope.py'):
        resolve_candidates(['configs/nope.py'])
    with pytest.raises(ValueError, match='named twice'):
        resolve_candidates(['swin-t', 'swin-t'])


def test_benchmark_full_models_amp_onnx_smoke(tmp_path):
    """model / model-train under --amp bf16 (NMS, RoIAlign used to crash there), equal
    detections, the parts breakdown, config paths, UperNet and ONNX Runtime candidates."""
    out = tmp_path / 'bench.json'
    cmd = [sys.executable, str(ROOT / 'tools' / 'benchmark.py'), '--shape', '64', '96',
           '--warmup', '0', '--iters', '1', '--threads', '1', '--amp', 'bf16', '--detections', '20',
           '--modes', 'infer', 'model', 'model-train',
           '--models', 'restv2', 'restv2-onnx', 'configs/upernet_restv2_t.py', 'upernet-swin-t',
           '--baseline', 'upernet-swin-t', '--malloc', 'system', '--quiet', '--json', str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'where the time goes' in proc.stdout and '20 detections per image' in proc.stdout
    report = json.loads(out.read_text())
    assert report['settings']['amp'] == 'bf16' and report['settings']['detections'] == 20
    assert report['settings']['malloc'] == 'system'
    rows = {r['name']: r for r in report['results']}
    assert set(rows) == {'restv2', 'restv2-onnx', 'upernet_restv2_t', 'upernet-swin-t'}
    det_parts = rows['restv2']['model']['parts_ms']
    assert {'backbone', 'neck', 'rpn', 'box head', 'mask head', 'mask pasting'} <= set(det_parts)
    assert sum(det_parts.values()) == pytest.approx(rows['restv2']['model']['median_ms'])
    assert {'backbone', 'decode head'} <= set(rows['upernet-swin-t']['model']['parts_ms'])
    assert rows['restv2']['model-train']['median_ms'] > 0
    assert rows['restv2-onnx']['infer']['median_ms'] > 0
    assert report['onnx_max_abs_diff']['restv2-onnx'] < 1e-3
    # the whole detector in ONNX Runtime (fp32: --amp does not apply), its detections mmdet's
    assert rows['restv2-onnx']['model']['median_ms'] > 0
    match = report['onnx_detection_match']['restv2-onnx']
    assert match['torch_detections'] == 20 and match['matched_fraction'] >= 0.95, match
    assert 'restv2-onnx/model-train' in ' '.join(report['skipped'])
    assert 'upernet_restv2_t/upernet-swin-t' in report['ratios']['model']
    assert any('upernet-swin-t/model-train' in s for s in report['skipped'])  # batch 1: BN


def test_benchmark_rejects_unknown_candidate():
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'benchmark.py'), '--models',
                           'vit'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "unknown candidate 'vit'" in proc.stderr


def test_equalize_head_work_fixes_proposals_and_detections():
    from restv2_mm.benchmark.candidates import OUR_CONFIG, equalize_head_work
    from restv2_mm.utils.flops import load_config
    cfg = load_config(OUR_CONFIG)
    equalize_head_work(cfg, 'mmdet', detections=37)
    test_cfg = cfg.model.test_cfg
    assert test_cfg.rpn.nms.iou_threshold == 1.0  # every proposal reaches the RoI heads
    assert test_cfg.rcnn.score_thr == 0 and test_cfg.rcnn.max_per_img == 37
    single = load_config(str(ROOT / 'configs' / 'retinanet_restv2_t.py'))
    equalize_head_work(single, 'mmdet', detections=37)
    assert single.model.test_cfg.score_thr == 0 and single.model.test_cfg.max_per_img == 37
    assert 'rpn' not in single.model.test_cfg
