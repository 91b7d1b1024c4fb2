"""The GPU check (tools/gpu_check.sh, restv2_mm/gpu_check.py) and the benchmark's CUDA options,
as far as they run without a GPU: the dry run parses every step's arguments with its own tool,
builds every benchmark candidate on the meta device and collects the cuda tests; a real run
refuses to start without CUDA, saying so. What needs the GPU is tests/test_cuda.py.
"""
import importlib
import json
import os
import os.path as osp
import sys

import pytest
import torch

from restv2_mm import gpu_check
from subprocess_tools import run

CUDA = torch.cuda.is_available()


@pytest.mark.slow
def test_dry_run_of_the_whole_check(tmp_path):
    # The cuda-tests step's dry run collects tests/test_cuda.py in a fresh pytest, which this
    # suite does anyway (its tests are skipped here): left out for time.
    out = run(['bash', 'tools/gpu_check.sh', '--dry-run', '--skip', 'cuda-tests',
               '--out', str(tmp_path), '--work', str(tmp_path / 'work')],
              env=dict(os.environ, PYTHON=sys.executable), timeout=600)
    with open(tmp_path / 'gpu_check.json') as f:
        check = json.load(f)
    assert check['dry_run'] and set(check['steps']) == set(gpu_check.STEP_NAMES)
    statuses = {name: row['status'] for name, row in check['steps'].items()}
    assert statuses == dict.fromkeys(gpu_check.STEP_NAMES, 'dry-run ok') | {
        'cuda-tests': 'skipped'}, out[-3000:]
    # Every command is the one a real run executes.
    assert check['commands']['bench-fp16'].startswith('tools/benchmark.py --device cuda')

    detector = check['steps']['bench-fp32']['results']
    built = {(t['name'], t['mode']): t for t in detector['tasks']}
    names = ['restv2-global', 'restv2-win', 'restv2-cwin', 'restv2-hwin', 'swin-t']
    assert set(built) == {(n, m) for n in names for m in ('infer', 'train', 'mem-train', 'model')}
    # Backbones ran on the meta device at 1280x800: strides 4..32, ceil-rounded.
    assert built[('restv2-win', 'infer')]['outputs'] == [
        [1, 96, 200, 320], [1, 192, 100, 160], [1, 384, 50, 80], [1, 768, 25, 40]]
    assert built[('swin-t', 'infer')]['outputs'][0] == [1, 96, 200, 320]
    assert built[('restv2-global', 'model')]['full_model']
    # ResTv2-T Mask R-CNN: Table 4's 49.9M parameters (also in tests/test_zoo_configs.py).
    assert abs(built[('restv2-global', 'model')]['params'] / 49.9e6 - 1) < 0.01
    upernet = {t['name'] for t in check['steps']['upernet-fp16']['results']['tasks']}
    assert upernet == {'upernet-restv2', 'upernet-swin-t'}
    assert check['steps']['quick-start-train']['results']['max_epochs'] == 20

    markdown = (tmp_path / 'gpu_check.md').read_text()
    assert '| cuda-tests | the cuda tests' in markdown and 'dry-run ok' in markdown
    assert osp.isfile(tmp_path / 'gpu_check.log')


@pytest.mark.skipif(CUDA, reason='checks the refusal on a machine without CUDA')
def test_real_run_without_cuda_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(['--out', 'unused'])
    assert e.value.code == 2 and 'no CUDA device' in capsys.readouterr().err


def test_step_names_and_budget_are_checked(capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(['--dry-run', '--only', 'bench'])
    assert "invalid choice: 'bench'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.parse_args(['--dry-run', '--budget', '100', '--setup-seconds', '95'])
    assert 'leaves nothing' in capsys.readouterr().err


def test_benchmark_cuda_options_parse_without_a_gpu(capsys):
    tool = gpu_check.load_benchmark_tool()
    args = tool.parse_args(['--device', 'cuda', '--dry-run', '--models', 'restv2', 'swin-t'])
    assert (args.warmup, args.iters) == tool.DEFAULT_RUNS['cuda'] == (5, 20)
    settings = tool.settings_from_args(args)
    assert settings.device == 'cuda' and settings.cudnn_benchmark
    assert not tool.settings_from_args(tool.parse_args(
        ['--device', 'cuda', '--dry-run', '--no-cudnn-benchmark'])).cudnn_benchmark
    assert (tool.parse_args([]).warmup, tool.parse_args([]).iters) == (1, 5)  # CPU as before
    if not CUDA:
        with pytest.raises(SystemExit):
            tool.parse_args(['--device', 'cuda'])
        assert '--dry-run checks the run without one' in capsys.readouterr().err


def test_benchmark_dry_run_command_line(tmp_path, capsys):
    plan = tmp_path / 'plan.json'
    gpu_check.load_benchmark_tool().main(
        ['--device', 'cuda', '--dry-run', '--models', 'restv2', '--modes', 'infer', 'mem-train',
         '--shape', '65', '97', '--json', str(plan)])
    printed = capsys.readouterr().out
    assert 'built on meta: restv2 infer' in printed and 'would be timed on cuda' in printed
    tasks = json.loads(plan.read_text())['tasks']
    assert [(t['name'], t['mode']) for t in tasks] == [('restv2', 'infer'),
                                                       ('restv2', 'mem-train')]
    assert tasks[0]['outputs'][3] == [1, 768, 3, 4]  # ceil(65 / 32), ceil(97 / 32)


@pytest.mark.skipif(CUDA, reason='checks a machine without CUDA')
def test_mmcv_ops_are_left_alone_without_a_gpu():
    from restv2_mm.utils.mmcv_cuda import mmcv_has_cuda_ops, route_cuda_ops_to_torchvision
    nms_module = importlib.import_module('mmcv.ops.nms')  # (mmcv.ops.nms is also a function)
    ext = nms_module.ext_module
    assert mmcv_has_cuda_ops() is False  # tools/setup_env.sh builds CPU ops
    assert route_cuda_ops_to_torchvision() is False
    assert nms_module.ext_module is ext


def test_a_benchmark_step_read_back_and_reported(tmp_path):
    """A benchmark step's JSON is read back as the GPU check reads it, and its FPS is set
    against the paper's in the markdown report (a report assembled by the benchmark's own
    report functions from given run times: 40 and 41 ms vs 46 ms)."""
    from restv2_mm.benchmark import OUR_CONFIG, report as rep
    results = [dict(name='restv2-global', model=rep.timing_row([0.040, 0.041], 1)),
               dict(name='swin-t', model=rep.timing_row([0.046, 0.046], 1))]
    report = dict(environment=rep.environment('cpu'),
                  settings=dict(shape=[800, 1280], batch=1, warmup=3, iters=2, amp=None,
                                channels_last=False, compile=False, config=OUR_CONFIG,
                                baseline='swin-t', modes=['model'], detections=100,
                                malloc='cached'),
                  results=results, ratios=rep.ratios(results, ['model'], 'swin-t'), skipped=[])
    (tmp_path / 'bench-fp32.json').write_text(json.dumps(report))
    step = next(s for s in gpu_check.STEPS if s.name == 'bench-fp32')
    passed, results = gpu_check.read_results(step, str(tmp_path), '', 12.0)
    assert passed and results == json.loads(json.dumps(report))
    row = dict(status='passed', wall_s=12.0, results=results)
    check = dict(environment=gpu_check.environment(), steps={'bench-fp32': row}, setup_s=0,
                 total_s=12.0, budget_s=600)
    assert gpu_check.fps_rows(results, 'restv2-global', 'swin-t') == pytest.approx(
        (1 / 0.0405, 1 / 0.046))
    text = gpu_check.markdown(check)
    assert '| Mask R-CNN | fp32 | 24.7 | 21.7 | 1.14 | 25.0 / 21.8 = 1.15 |' in text
    assert '| bench-fp32 | ResTv2-T (4 styles) vs Swin-T, 1280x800, fp32 | passed | 12 | 75 | ' \
        '2 candidates |' in text
    assert '## bench-fp32' in text and '| restv2-global' in text  # the benchmark's own table
    assert '## bench-fp32' not in gpu_check.markdown(check, full=False)
