"""A diverging run stops with a named error and never leaves non-finite checkpoints behind.

mmengine's real Runner on a tiny regression model (tests/divergence_toy.py), so that each
failure can be provoked at a chosen iteration: a batch of nan inputs (nan loss), a loss term
whose gradient is nan (finite loss, nan update), a loss scaler that keeps skipping, a changed
lr on resume. The end-to-end runs of the real configs and tools are in test_divergence_e2e.py.
"""
import glob
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from divergence_toy import NanLoss, PoisonGradients, captured_log, toy_dataset, toy_runner
from restv2_mm.engine import (CheckpointFileError, NonFiniteLossError, NonFiniteStateError,
                              StopOnNonFiniteLossHook, find_resumable_checkpoint,
                              load_local_checkpoint)
from restv2_mm.engine.finite_state import checkpoint_nonfinite_names, nonfinite_names

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BATCH = 4


@pytest.fixture(autouse=True)
def _keep_the_default_scope():
    """Each Runner makes its default scope ('mmengine') the current one; later tests of other
    files build mmdet / mmseg models by plain type names, so the scopes are restored."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmengine'):
        yield


def train(runner):
    """``runner.train()`` with its log captured; returns the capture."""
    with captured_log() as capture:
        runner.train()
    return capture


def train_expecting(error, runner):
    with captured_log() as capture, pytest.raises(error) as info:
        runner.train()
    return str(info.value), capture


def checkpoints(work_dir):
    return sorted(osp.basename(p) for p in glob.glob(osp.join(work_dir, '*.pth*')))


def pointer(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def assert_finite(path):
    assert checkpoint_nonfinite_names(load_local_checkpoint(path)) == [], path


# ----------------------------------------------------------------------------- the checks
def test_nonfinite_names_reads_each_device_once_and_names_in_order():
    values = [('a', torch.ones(3)), ('b', torch.tensor([1.0, float('nan')])),
              ('steps', torch.tensor([7])), ('lr', float('inf')), ('c', torch.ones(2)),
              ('d', torch.tensor([float('-inf')], dtype=torch.float16)), ('empty', torch.ones(0)),
              # sums overflow, the elements are finite
              ('huge', torch.full((1000,), 1e36)), ('half', torch.full((10,), 6e4).half()),
              ('z', torch.tensor([1 + 1j, complex(0, float('nan'))]))]
    assert nonfinite_names(values) == ['b', 'lr', 'd', 'z']
    checkpoint = dict(meta=dict(loss=float('nan')), message_hub={'x': float('nan')},
                      state_dict={'w': torch.ones(1), 'running_var': torch.tensor([float('nan')])},
                      optimizer=dict(state={0: dict(exp_avg=torch.tensor([float('inf')]))},
                                     param_groups=[dict(lr=0.1, params=[0])]))
    # A logged nan (meta, message hub) is not training state.
    assert checkpoint_nonfinite_names(checkpoint) == ['state_dict/running_var',
                                                      'optimizer/state/0/exp_avg']
    assert checkpoint_nonfinite_names({'w': torch.tensor([float('nan')])}) == ['w']  # bare weights


def test_hook_validates_its_arguments():
    with pytest.raises(ValueError, match='max_skips_in_a_row'):
        StopOnNonFiniteLossHook(max_skips_in_a_row=0)
    with pytest.raises(ValueError, match='min_loss_scale'):
        StopOnNonFiniteLossHook(min_loss_scale=-1)


# ----------------------------------------------------------------------------- fp32 runs
def test_nan_loss_stops_at_that_iteration_and_keeps_the_newest_finite_checkpoint(tmp_path):
    # Samples 20-23 are the batch of iteration 6; checkpoints every 2 iterations, only 1 kept.
    dataset = toy_dataset(nan_rows=range(5 * BATCH, 6 * BATCH))
    runner = toy_runner(tmp_path, max_iters=12, dataset=dataset, checkpoint_interval=2,
                        max_keep_ckpts=1)
    message, log = train_expecting(NonFiniteLossError, runner)
    newest = osp.join(str(tmp_path), 'iter_4.pth')
    assert message.startswith('Training diverged at iteration 6: not finite: loss = nan, '
                              'loss_mse = nan, loss_l1 = nan; lr 0.01.')
    assert f'The newest checkpoint, {newest}, has finite weights' in message
    assert f'`--resume {newest}`' in message
    assert message in log.text()  # also in the run's log file
    assert checkpoints(tmp_path) == ['iter_4.pth'] and pointer(tmp_path) == newest
    assert_finite(newest)
    # With the hook turned off (custom_hooks=[]), the checkpoint guard still refuses the
    # nan state of iteration 6 and keeps iter_4.pth.
    plain = tmp_path / 'no_hook'
    message, _ = train_expecting(NonFiniteStateError, toy_runner(
        plain, max_iters=12, dataset=dataset, checkpoint_interval=2, max_keep_ckpts=1,
        divergence_hook=False))
    assert message.startswith(f'Not writing {plain / "iter_6.pth"}: the training state after '
                              'iteration 6 holds nan or inf in state_dict/norm.weight')
    assert checkpoints(plain) == ['iter_4.pth'] and pointer(plain) == str(plain / 'iter_4.pth')


def test_epoch_loops_name_the_epoch_and_batch_too(tmp_path):
    # 8 batches per epoch: iteration 11 is the 3rd batch of the 2nd epoch.
    message, _ = train_expecting(NonFiniteLossError, toy_runner(
        tmp_path, max_iters=None, epochs=3, dataset=toy_dataset(num=32), hooks=[NanLoss([11])]))
    assert message.startswith('Training diverged at iteration 11 (epoch 2, batch 3): not '
                              'finite: loss = nan, loss_mse = nan; lr 0.01.')


def test_the_lr_is_named_with_its_ratio_to_the_config_lr(tmp_path):
    # The lr typo at toy scale: gamma 1e30 at iteration 3 blows the weights up.
    schedule = [dict(type='MultiStepLR', milestones=[3], gamma=1e30, by_epoch=False)]
    message, _ = train_expecting(NonFiniteLossError, toy_runner(
        tmp_path, max_iters=20, param_scheduler=schedule, checkpoint_interval=2))
    assert 'lr 1e+28 (1e+30 x the config\'s 0.01)' in message
    assert all(not checkpoint_nonfinite_names(load_local_checkpoint(p))
               for p in glob.glob(str(tmp_path / '*.pth')))


def test_nonfinite_gradient_norm_stops_when_gradients_are_clipped(tmp_path):
    runner = toy_runner(tmp_path, max_iters=8, clip_grad=dict(max_norm=1.0),
                        hooks=[PoisonGradients([3])], checkpoint_interval=1)
    message, _ = train_expecting(NonFiniteLossError, runner)
    # The loss is finite; the norm of its gradient is not.
    assert message.startswith('Training diverged at iteration 3: not finite: grad_norm = nan;')
    assert checkpoints(tmp_path) == ['iter_1.pth', 'iter_2.pth']


def test_nonfinite_weights_with_a_finite_loss_are_never_checkpointed(tmp_path):
    # No clipping: nothing reports the nan gradient of iteration 3, the update makes the
    # weights nan and the checkpoint of iteration 3 is refused before anything is written.
    runner = toy_runner(tmp_path, max_iters=8, hooks=[PoisonGradients([3])],
                        checkpoint_interval=1, max_keep_ckpts=1)
    message, log = train_expecting(NonFiniteStateError, runner)
    newest = osp.join(str(tmp_path), 'iter_2.pth')
    assert message.startswith(f'Not writing {osp.join(str(tmp_path), "iter_3.pth")}: the '
                              'training state after iteration 3 holds nan or inf in '
                              'state_dict/linear.weight, optimizer/state/2/exp_avg, '
                              'optimizer/state/2/exp_avg_sq.')
    assert f'The newest checkpoint, {newest}' in message and message in log.text()
    assert checkpoints(tmp_path) == ['iter_2.pth'] and pointer(tmp_path) == newest
    assert_finite(newest)


def logged_values(log):
    """The lr and the loss / grad-norm values of each logged iteration (not the timings)."""
    return [(re.search(r'lr: (\S+)', line)[1], line.split('  loss: ')[1])
            for line in log.lines if '(train)' in line]


def test_a_healthy_run_is_unchanged(tmp_path):
    runs = {}
    for hook in (True, False):
        runner = toy_runner(tmp_path / str(hook), max_iters=6, divergence_hook=hook,
                            clip_grad=dict(max_norm=1.0), checkpoint_interval=3)
        log = train(runner)
        runs[hook] = (log, load_local_checkpoint(str(tmp_path / str(hook) / 'iter_6.pth')))
    (log_on, on), (log_off, off) = runs[True], runs[False]
    for key in on['state_dict']:
        assert torch.equal(on['state_dict'][key], off['state_dict'][key]), key
    assert len(logged_values(log_on)) == 6 and logged_values(log_on) == logged_values(log_off)
    assert not [line for line in log_on.lines if 'not finite' in line or 'diverged' in line]


# ----------------------------------------------------------------------------- resume
def diverged_work_dir(tmp_path):
    """A work dir as plain mmengine leaves it after a divergence: iter_2 and iter_4 finite,
    iter_6 with nan weights and optimizer state, ``last_checkpoint`` naming iter_6."""
    work = tmp_path / 'work'
    train(toy_runner(work, max_iters=4, checkpoint_interval=2))
    diverged = load_local_checkpoint(str(work / 'iter_4.pth'))
    diverged['state_dict']['linear.weight'].fill_(float('nan'))
    diverged['optimizer']['state'][2]['exp_avg'].fill_(float('inf'))
    diverged['meta']['iter'] = 6
    torch.save(diverged, str(work / 'iter_6.pth'))
    (work / 'last_checkpoint').write_text(str(work / 'iter_6.pth'))
    return work


def test_resume_skips_nonfinite_checkpoints_and_says_so(tmp_path):
    work = diverged_work_dir(tmp_path)
    with captured_log() as capture:
        assert find_resumable_checkpoint(str(work)) == str(work / 'iter_4.pth')
    assert (f'Not resuming from {work / "iter_6.pth"}: it holds nan or inf (a diverged run) in '
            'state_dict/linear.weight, optimizer/state/2/exp_avg.') in capture.text()
    assert f'Resuming from {work / "iter_4.pth"}, the newest complete checkpoint with finite' \
        in capture.text()
    # A Runner with resume=True (what `--resume` sets) continues from iteration 4.
    log = train(toy_runner(work, max_iters=6, checkpoint_interval=2, resume=True))
    assert 'resumed epoch: 0, iter: 4' in log.text()
    assert_finite(str(work / 'iter_6.pth'))  # the diverged file was replaced by a finite one

    # Only diverged checkpoints: an error, not a silent start from scratch.
    only_bad = diverged_work_dir(tmp_path / 'only_bad')
    for step in (2, 4):
        os.remove(only_bad / f'iter_{step}.pth')
    with pytest.raises(CheckpointFileError, match=r'(?s)no complete checkpoint in .* with finite '
                       r'weights and optimizer state:.*iter_6\.pth: it holds nan or inf'):
        find_resumable_checkpoint(str(only_bad))


def test_resuming_or_loading_a_nonfinite_checkpoint_explicitly_is_an_error(tmp_path):
    work = diverged_work_dir(tmp_path)
    bad = str(work / 'iter_6.pth')
    with pytest.raises(NonFiniteStateError, match=rf'checkpoint {re.escape(bad)} holds nan or '
                       r'inf in state_dict/linear\.weight, optimizer/state/2/exp_avg: a diverged'):
        toy_runner(tmp_path / 'r', max_iters=8, resume=True, load_from=bad).train()
    with pytest.raises(NonFiniteStateError, match=r'linear\.weight: .*Use an earlier checkpoint'):
        toy_runner(tmp_path / 'l', max_iters=8, load_from=bad).train()


SCHEDULE = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=3),
            dict(type='MultiStepLR', milestones=[5, 7], gamma=0.5, by_epoch=False)]


def lr_trace():
    """A hook recording the lr of every param group each iteration trains with (and the
    ``base_lr`` mmengine logs)."""
    from mmengine.hooks import Hook

    class LrTrace(Hook):
        priority = 'VERY_LOW'

        def __init__(self):
            self.lrs = {}

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            self.lrs[runner.iter + 1] = runner.optim_wrapper.get_lr()

    return LrTrace()


@pytest.mark.parametrize('change', ['lr', 'gamma', 'nothing'])
def test_a_resumed_run_follows_the_config_lr_and_schedule(tmp_path, change):
    # Resumed from the checkpoint of iteration 6 of a 9-iteration run (lr 0.01, gamma 0.5).
    def optimizer(lr):  # no weight decay on norms: one param group per parameter
        return dict(optimizer=dict(type='AdamW', lr=lr, weight_decay=0.01),
                    paramwise_cfg=dict(norm_decay_mult=0.))

    train(toy_runner(tmp_path / 'first', max_iters=9, param_scheduler=SCHEDULE,
                     checkpoint_interval=6, optim_wrapper=optimizer(0.01)))
    lr, schedule = 0.01, [dict(s) for s in SCHEDULE]
    if change == 'lr':
        lr = 0.002
    elif change == 'gamma':
        schedule[1]['gamma'] = 0.1
    resumed_trace, fresh_trace = lr_trace(), lr_trace()
    log = train(toy_runner(tmp_path / 'second', max_iters=9, param_scheduler=schedule,
                           optim_wrapper=optimizer(lr), resume=True,
                           load_from=str(tmp_path / 'first' / 'iter_6.pth'),
                           hooks=[resumed_trace]))
    train(toy_runner(tmp_path / 'fresh', max_iters=9, param_scheduler=schedule,
                     optim_wrapper=optimizer(lr), hooks=[fresh_trace]))
    # Iterations 7-9 train with exactly the lrs of an uninterrupted run with the new config,
    # in every param group (4) and in the base_lr that mmengine logs.
    assert len(fresh_trace.lrs[7]['lr']) == 4 and 'base_lr' in fresh_trace.lrs[7]
    assert resumed_trace.lrs == {i: fresh_trace.lrs[i] for i in (7, 8, 9)}
    warning = {'lr': 'optimizer lr: checkpoint 0.01, config 0.002 (4 of 4 param groups differ)',
               'gamma': 'param_scheduler[1] (MultiStepLR) gamma: checkpoint 0.5, config 0.1'}
    if change == 'nothing':
        assert 'The config differs from the resumed checkpoint' not in log.text()
    else:
        assert (f'The config differs from the resumed checkpoint:\n  {warning[change]}\nThe run '
                "continues with the config's: the lr of iteration 7 is now "
                f"{fresh_trace.lrs[7]['lr'][0]:.4g} (the checkpoint had ") in log.text()


# ----------------------------------------------------------------------------- AMP
def cpu_amp_wrapper(model, lr=0.01):
    """mmengine's real AmpOptimWrapper (dynamic loss scale) with torch's CPU GradScaler.

    Its constructor asserts a GPU; everything it does per step (scale the loss, unscale,
    skip the update on non-finite gradients, update the scale) is run unchanged."""
    wrapper = AmpOptimWrapper.__new__(AmpOptimWrapper)
    OptimWrapper.__init__(wrapper, optimizer=torch.optim.AdamW(model.parameters(), lr=lr))
    wrapper._scale_update_param = None
    wrapper.loss_scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 8)
    wrapper.cast_dtype = None
    return wrapper


def amp_runner(work_dir, poisoned, max_iters, **hook_args):
    runner = toy_runner(work_dir, max_iters=max_iters, divergence_hook=False,
                        hooks=[PoisonGradients(poisoned), StopOnNonFiniteLossHook(**hook_args)],
                        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)))
    runner.optim_wrapper = cpu_amp_wrapper(runner.model)
    return runner


def test_amp_logs_each_skipped_update_and_trains_on(tmp_path):
    log = train(amp_runner(tmp_path, poisoned=[2, 5, 6], max_iters=8, max_skips_in_a_row=3))
    skips = [line for line in log.lines if line.startswith('AMP: iteration')]
    assert skips == ['AMP: iteration 2 skipped its update (gradients not finite at loss scale '
                     '256); loss scale now 128.',
                     'AMP: iteration 5 skipped its update (gradients not finite at loss scale '
                     '128); loss scale now 64.',
                     'AMP: iteration 6 skipped its update (gradients not finite at loss scale '
                     '64); loss scale now 32.']
    assert_finite(str(tmp_path / 'iter_8.pth'))


def test_amp_stops_when_updates_keep_being_skipped(tmp_path):
    message, log = train_expecting(NonFiniteLossError, amp_runner(
        tmp_path, poisoned=range(3, 20), max_iters=20, max_skips_in_a_row=4))
    assert message.startswith('Training diverged under AMP at iteration 6: 4 updates in a row '
                              'were skipped (iterations 3-6, max_skips_in_a_row=4): the '
                              'gradients stay non-finite at loss scale 16;')
    assert sum(line.startswith('AMP: iteration') for line in log.lines) == 4
    # Skipped updates leave the weights as they were: every checkpoint is finite.
    assert checkpoints(tmp_path)[-1] == 'iter_6.pth'
    for path in glob.glob(str(tmp_path / '*.pth')):
        assert_finite(path)


def test_amp_stops_when_the_loss_scale_collapses(tmp_path):
    message, _ = train_expecting(NonFiniteLossError, amp_runner(
        tmp_path, poisoned=range(2, 20), max_iters=20, min_loss_scale=100.0))
    assert message.startswith('Training diverged under AMP at iteration 3: the loss scale fell '
                              'to 64, below min_loss_scale=100: the gradients are not finite '
                              'even unscaled;')


# ----------------------------------------------------------------------------- registration
def test_the_hook_is_registered_and_on_in_every_config():
    from mmdet.registry import HOOKS as DET_HOOKS
    from mmengine.registry import HOOKS
    from mmseg.registry import HOOKS as SEG_HOOKS
    for registry in (HOOKS, DET_HOOKS, SEG_HOOKS):
        hook = registry.build(dict(type='StopOnNonFiniteLossHook', max_skips_in_a_row=3))
        assert isinstance(hook, StopOnNonFiniteLossHook) and hook.max_skips_in_a_row == 3
    # Every config inherits custom_hooks from one model base and none replaces it (read from
    # the files: parsing 20 configs with mmdet::/mmseg:: bases takes minutes on 2 cores) ...
    defines = {path: 'custom_hooks' in config_assignments(path)
               for path in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)}
    bases = sorted(osp.basename(p) for p, has in defines.items() if has)
    assert bases == ['cascade_mask_rcnn_restv2_fpn.py', 'mask_rcnn_restv2_fpn.py',
                     'retinanet_restv2_fpn.py', 'upernet_restv2_ade20k.py']
    configs = sorted(glob.glob(osp.join(REPO, 'configs', '*.py')))
    assert len(configs) >= 19
    for path in configs:
        assert [p for p in local_bases(path) if defines[p]], f'{path} does not inherit the hook'
    # ... and a config read by mmengine has it.
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'upernet_restv2_t_tiny_ade20k.py'))
    assert cfg.custom_hooks == [dict(type='StopOnNonFiniteLossHook')]


def config_assignments(path):
    import ast
    with open(path) as f:
        tree = ast.parse(f.read())
    return {target.id: node.value for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def local_bases(path):
    """The config files ``path`` inherits from in this repository, itself first."""
    import ast
    found = [path]
    base = config_assignments(path).get('_base_')
    names = [] if base is None else ast.literal_eval(base)
    for name in [names] if isinstance(names, str) else names:
        if '::' not in name:
            found += local_bases(osp.normpath(osp.join(osp.dirname(path), name)))
    return found


# ----------------------------------------------------------------------------- distributed
DIST_WORKER = '''
import os, sys, torch.distributed as dist
sys.path.insert(0, {tests!r})
from divergence_toy import toy_dataset, toy_runner
rank = int(os.environ['RANK'])
store = dist.TCPStore('127.0.0.1', {port}, is_master=False)
dist.init_process_group('gloo', store=store, rank=rank, world_size=2)
# Only rank 1's batch of iteration 3 is nan (each rank reads its own copy of the data).
nan_rows = range(8, 12) if rank == 1 else ()
for interval in (1, 10):  # one process group for both runs: the start-up is the slow part
    work = os.path.join({work!r}, f'interval_{{interval}}')
    runner = toy_runner(work, max_iters=8, dataset=toy_dataset(nan_rows=nan_rows),
                        checkpoint_interval=interval, launcher='pytorch',
                        model_wrapper_cfg=dict(type='MMDistributedDataParallel', device_ids=None))
    try:
        runner.train()
        outcome = 'finished'
    except Exception as err:
        outcome = f'{{type(err).__name__}}: {{err}}'
    with open(os.path.join(work, f'outcome_{{rank}}.txt'), 'w') as f:
        f.write(outcome)
del runner  # restv2_mm releases the process group at exit; a Runner in a global would keep it
'''


@pytest.mark.slow
def test_every_rank_stops_when_one_rank_diverges(tmp_path):
    """2 gloo processes; only rank 1 sees a nan loss (iteration 3). Both raise the same error
    naming each rank's terms: at the checkpoint of iteration 3 (checkpoint interval 1: settled
    before saving) or one iteration later (interval 10); neither hangs."""
    import torch.distributed as dist
    # The ranks meet at a store this process serves on a port the system picks (bound while
    # they run: a port picked and released could be taken by another process meanwhile).
    store = dist.TCPStore('127.0.0.1', 0, is_master=True, wait_for_workers=False)
    script = tmp_path / 'worker.py'
    script.write_text(DIST_WORKER.format(tests=osp.dirname(__file__), work=str(tmp_path),
                                         port=store.port))
    env = dict(os.environ, WORLD_SIZE='2')
    procs = [subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)))
             for rank in range(2)]
    try:
        outputs = [proc.communicate(timeout=300)[0] for proc in procs]  # neither hangs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for interval in (1, 10):
        work = tmp_path / f'interval_{interval}'
        written = [work / f'outcome_{rank}.txt' for rank in range(2)]
        assert all(path.exists() for path in written), outputs[0][-3000:] + outputs[1][-3000:]
        outcomes = [path.read_text() for path in written]
        assert outcomes[0] == outcomes[1], outcomes
        assert outcomes[0].startswith(
            'NonFiniteLossError: Training diverged at iteration 3: not finite: rank 0: all '
            'finite; rank 1: loss = nan, loss_mse = nan, loss_l1 = nan; lr 0.01.'), outcomes[0]
        assert 'iter_3.pth' not in checkpoints(work)
    assert pointer(tmp_path / 'interval_1') == str(tmp_path / 'interval_1' / 'iter_2.pth')
