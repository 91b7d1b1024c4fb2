"""Distributed runs exit 0, run after run: tools/dist_train.sh with 2 gloo processes whose last
step is a checkpoint (its RNG gather is the last collective).

A rank used to abort at exit now and then ('terminate called without an active exception'):
gloo's worker thread was still releasing the gather's tensors when the interpreter shut down, and
torchrun reported the finished run as failed. The mechanism, its fix and the forced reproduction
are in tests/test_reliability.py (distributed exit) and docs/distributed.md.
"""
import os.path as osp

import pytest
import torch

from restv2_mm.datasets.tiny_ade20k import make_tiny_ade20k
from subprocess_tools import launcher_env, run
from test_reliability_e2e import seg_config

pytestmark = pytest.mark.slow

RUNS = 3


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (gloo) path')
def test_dist_train_ending_on_a_checkpoint_exits_0_every_time(tmp_path):
    data_root = str(tmp_path / 'tiny_ade')
    make_tiny_ade20k(data_root, num_train=4, num_val=2, height_range=(48, 64),
                     width_range=(48, 80))
    config = seg_config(tmp_path, data_root, max_iters=3)
    for attempt in range(RUNS):
        work_dir = tmp_path / f'work_{attempt}'
        # No validation: the checkpoint of iteration 3 is the run's last step.
        out = run(['bash', 'tools/dist_train.sh', config, '2', '--work-dir', str(work_dir),
                   '--cfg-options', 'train_cfg.val_interval=1000'], env=launcher_env())
        assert 'rank 0 of 2 CPU processes' in out and 'Iter(train) [3/3]' in out
        assert osp.isfile(work_dir / 'iter_3.pth')
        assert 'terminate called' not in out
