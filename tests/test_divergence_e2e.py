"""The lr typo of issue 20, end to end through tools/train.py and tools/dist_train.sh.

The issue's run is the tiny ADE20K quick start with a mistyped lr step (MultiStepLR, gamma 1e12
at iteration 15), a checkpoint every 5 iterations and max_keep_ckpts=1, 40 iterations: the loss
is nan from iteration 17 on, training went on to 40, iter_15.pth was deleted and the run exited
with 0. Here the same, cut to what is needed: configs/upernet_restv2_t_tiny_ade20k.py shrunk to
a tiny ResTv2 arch on 64x64 crops (as in test_reliability_e2e.py), the typo at iteration 3, a
checkpoint every 3 iterations, max_keep_ckpts=1, 20 iterations. Now:

* the run stops at the first non-finite loss with the named error and a non-zero exit code;
* the work dir holds only finite checkpoints, still the newest good one (iter_3.pth), and
  ``last_checkpoint`` names it;
* ``--resume`` with the typo fixed continues from iter_3.pth at the config's lr;
* the same through tools/dist_train.sh with 2 processes: every rank stops, none hangs.
"""
import glob
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

from restv2_mm.engine import load_local_checkpoint
from restv2_mm.engine.finite_state import checkpoint_nonfinite_names
from subprocess_tools import launcher_env, run
from test_reliability_e2e import seg_config, seg_data  # noqa: F401  (seg_data: a fixture)

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TIMEOUT = 600  # a hang fails the test instead of the suite


STEP, INTERVAL, ITERS = 3, 3, 20  # the typo's iteration, checkpoint interval, iterations


def lr_typo_config(tmp_path, data_root):
    base = seg_config(tmp_path, data_root, max_iters=ITERS)
    path = tmp_path / 'lr_typo.py'
    path.write_text(f'''
_base_ = [{base!r}]
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=2),
    dict(type='MultiStepLR', milestones=[{STEP}], gamma=1e12, by_epoch=False),  # the typo
    dict(type='PolyLR', eta_min=0., power=1., by_epoch=False, begin=2, end={ITERS}),
]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval={INTERVAL}, max_keep_ckpts=1))
''')
    return str(path)


def train_until_it_fails(command, env=None):
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    return output


def assert_only_the_newest_good_checkpoint(work, output):
    newest = osp.join(work, f'iter_{STEP}.pth')
    match = re.search(r'Training diverged at iteration (\d+): not finite: (.*?); lr (\S+) '
                      r"\((\S+) x the config's 0\.0006\)", output)
    assert match, output[-3000:]
    assert int(match[1]) > STEP and ('loss = nan' in match[2] or 'loss = inf' in match[2])
    assert float(match[3]) > 1e8 and float(match[4]) > 1e11  # the lr the typo made
    assert f'The newest checkpoint, {newest}, has finite weights' in output
    assert [osp.basename(p) for p in glob.glob(osp.join(work, '*.pth*'))] == [f'iter_{STEP}.pth']
    with open(osp.join(work, 'last_checkpoint')) as f:
        assert f.read().strip() == newest
    assert checkpoint_nonfinite_names(load_local_checkpoint(newest)) == []
    return int(match[1])


def test_lr_typo_stops_keeps_the_good_checkpoint_and_resumes(tmp_path, seg_data):  # noqa: F811
    config, work = lr_typo_config(tmp_path, seg_data), str(tmp_path / 'work')
    output = train_until_it_fails([sys.executable, 'tools/train.py', config, '--work-dir', work])
    stopped = assert_only_the_newest_good_checkpoint(work, output)
    assert 'NonFiniteLossError: Training diverged' in output.strip().splitlines()[-1]
    # Iterations logged: up to the last finite one, none after the stop.
    logged = [int(i) for i in re.findall(rf'Iter\(train\) \[\s*(\d+)/{ITERS}\]', output)]
    assert logged and max(logged) == stopped - 1

    # The user fixes the typo and resumes: from iter_3, with the config's lr at iteration 4.
    end = STEP + 2
    out = run([sys.executable, 'tools/train.py', config, '--work-dir', work, '--resume',
               '--cfg-options', 'param_scheduler.1.gamma=0.1', f'train_cfg.max_iters={end}'],
              timeout=TIMEOUT)
    assert f'resumed epoch: 0, iter: {STEP}' in out
    assert ('param_scheduler[1] (MultiStepLR) gamma: checkpoint 1000000000000.0, config 0.1'
            in out)
    resumed = re.search(rf"continues with the config's: the lr of iteration {STEP + 1} is now "
                        r'(\S+) \(the checkpoint had (\S+)\)', out)
    assert resumed and float(resumed[1]) < 1e-3 and float(resumed[2]) > 1e8, out[-3000:]
    assert re.findall(rf'Iter\(train\) \[\s*(\d+)/{end}\]', out) == [str(STEP + 1), str(end)]
    # mmengine's logged base_lr (its base_param_settings, stepped by the same schedulers)
    # follows too: here it equals the lr of the param groups.
    logged = re.findall(r'base_lr: (\S+) lr: (\S+)', out)
    assert len(logged) == 2 and all(base == lr for base, lr in logged), logged
    final = load_local_checkpoint(osp.join(work, f'iter_{end}.pth'))
    assert checkpoint_nonfinite_names(final) == []
    assert final['optimizer']['param_groups'][0]['lr'] < 1e-3


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (gloo) path')
def test_lr_typo_through_dist_train_stops_every_rank(tmp_path, seg_data):  # noqa: F811
    config, work = lr_typo_config(tmp_path, seg_data), str(tmp_path / 'work')
    output = train_until_it_fails(['bash', 'tools/dist_train.sh', config, '2', '--work-dir', work],
                                  env=launcher_env())
    assert 'rank 0 of 2 CPU processes' in output
    assert_only_the_newest_good_checkpoint(work, output)
    # The ranks agreed: the error lists what each rank saw.
    assert re.search(r'not finite: rank 0: .*; rank 1: ', output), output[-3000:]
