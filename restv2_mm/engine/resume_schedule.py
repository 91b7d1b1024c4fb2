"""A resumed run follows the config's lr and lr schedule, and says so when they changed.

mmengine's ``Runner.resume`` restores the optimizer's param groups (``lr``, ``initial_lr``) and
each param scheduler's whole state, its settings included (``milestones``, ``gamma``,
``eta_min``, ``begin``/``end``...), from the checkpoint. A config changed between the runs,
e.g. a lower ``optimizer.lr`` or a corrected ``gamma`` after a divergence, was therefore
ignored without a word, and the resumed run diverged again from the same lr.

Now, when the config's starting lr of any param group, or its lr schedulers' settings, differ
from the checkpoint's, a warning names each difference and the run continues with the
config's: every param group's lr becomes what the config's schedule gives at the resumed
iteration (the config's lr schedulers are replayed over the iterations and epochs already
trained, on a stand-in optimizer with one param group per distinct starting lr), and the
schedulers continue from there. The optimizer's moments, the iteration, the RNG states and
everything else still come from the checkpoint. When nothing differs, nothing is touched and
the resume stays exact. Configs this cannot replay (several optimizers, momentum or
plateau schedulers, a Runner built without a config) get the warning only.
"""
import copy
import warnings
from typing import List, Optional

import torch
from mmengine.logging import print_log

# Scheduler state that changes while training; everything else is a setting from the config.
_RUNTIME_KEYS = frozenset({'base_values', 'last_step', '_global_step', '_last_value',
                           '_get_value_called_within_step', 'verbose'})


def _settings(scheduler) -> dict:
    state = {k: v for k, v in scheduler.state_dict().items() if k not in _RUNTIME_KEYS}
    return dict(type=type(scheduler).__name__, **state)


def _param_groups(runner) -> Optional[list]:
    """The groups the schedulers step: the optimizer's, and mmengine's ``base_param_settings``
    (the ``base_lr`` of the log) where the optimizer has several."""
    from mmengine.optim import OptimWrapper
    wrapper = runner.optim_wrapper
    return wrapper.param_groups if isinstance(wrapper, OptimWrapper) else None


def snapshot_config_schedule(runner) -> Optional[dict]:
    """The config's starting lrs and scheduler settings, taken after ``Runner.train`` built the
    optimizer and schedulers and before ``resume`` overwrites them; None when not applicable."""
    groups = _param_groups(runner)
    schedulers = runner.param_schedulers
    if groups is None or not isinstance(schedulers, list) or not all(
            hasattr(s, 'state_dict') for s in schedulers):
        return None
    return dict(initial_lrs=[float(g.get('initial_lr', g['lr'])) for g in groups],
                settings=[_settings(s) for s in schedulers])


def _differences(before: dict, groups: list, schedulers: list) -> List[str]:
    """``groups``: the optimizer's param groups (without mmengine's base_param_settings)."""
    found = []
    loaded_lrs = [float(g.get('initial_lr', g['lr'])) for g in groups]
    changed = [(c, l) for c, l in zip(before['initial_lrs'], loaded_lrs) if c != l]
    if changed:
        config_lr, loaded_lr = changed[0]
        found.append(f"optimizer lr: checkpoint {loaded_lr:.4g}, config {config_lr:.4g}"
                     + (f' ({len(changed)} of {len(groups)} param groups differ)'
                        if len(groups) > 1 else ''))
    loaded = [_settings(s) for s in schedulers]
    if len(loaded) != len(before['settings']):
        found.append(f'param_scheduler: checkpoint has {len(loaded)} schedulers, config '
                     f"{len(before['settings'])}")
    for index, (old, new) in enumerate(zip(loaded, before['settings'])):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                found.append(f'param_scheduler[{index}] ({new["type"]}) {key}: checkpoint '
                             f'{old.get(key)!r}, config {new.get(key)!r}')
    return found


def apply_config_schedule(runner, before: Optional[dict]) -> None:
    """After ``Runner.resume``: if the config's lr or lr schedule differs from the checkpoint's,
    warn and continue with the config's (see the module docstring)."""
    if before is None:
        return
    groups = _param_groups(runner)
    schedulers = runner.param_schedulers
    if groups is None or not isinstance(schedulers, list) or len(groups) != len(
            before['initial_lrs']):
        return
    optimizer_groups = runner.optim_wrapper.optimizer.param_groups
    differences = _differences(before, optimizer_groups, schedulers)
    if not differences:
        return
    listed = ''.join(f'\n  {line}' for line in differences)
    problem = _cannot_replay(runner)
    if problem is not None:
        print_log(f'The config differs from the resumed checkpoint:{listed}\nThe run continues '
                  f"with the checkpoint's lr and schedule ({problem}).", logger='current',
                  level=30)
        return
    old_lrs = [float(g['lr']) for g in optimizer_groups]
    runner.param_schedulers = _rebuild_at_resumed_step(runner, before['initial_lrs'])
    new_lrs = [float(g['lr']) for g in optimizer_groups]
    print_log(f'The config differs from the resumed checkpoint:{listed}\nThe run continues '
              f"with the config's: the lr of iteration {runner.iter + 1} is now "
              f'{_lr_text(new_lrs)} (the checkpoint had {_lr_text(old_lrs)}); the optimizer '
              'state and everything else come from the checkpoint.', logger='current', level=30)


def _lr_text(lrs: List[float]) -> str:
    return f'{lrs[0]:.4g}' if min(lrs) == max(lrs) else f'{min(lrs):.4g} to {max(lrs):.4g}'


def _cannot_replay(runner) -> Optional[str]:
    config = runner.cfg.get('param_scheduler') if runner.cfg is not None else None
    if not config:
        return 'the Runner has no param_scheduler config to replay'
    configs = config if isinstance(config, (list, tuple)) else [config]
    if not all(isinstance(c, dict) for c in configs):
        return 'the param_scheduler config is not a list of dicts'
    if not all(s.param_name == 'lr' for s in runner.param_schedulers):
        return 'only lr schedules are replayed, the config also schedules momentum'
    if any('ReduceOnPlateau' in type(s).__name__ for s in runner.param_schedulers):
        return 'ReduceOnPlateau depends on validation results and cannot be replayed'
    return None


def _rebuild_at_resumed_step(runner, config_lrs: List[float]) -> list:
    """Schedulers built from the config, stepped as the ParamSchedulerHook would have stepped
    them up to the resumed iteration; sets every param group's lr to their value."""
    from mmengine.optim import OptimWrapper
    from mmengine.runner import EpochBasedTrainLoop
    config = copy.deepcopy(runner.cfg.param_scheduler)
    distinct = sorted(set(config_lrs))
    stand_in = torch.optim.SGD([dict(params=[torch.zeros(1, requires_grad=True)], lr=lr)
                                for lr in distinct], lr=distinct[0])
    with warnings.catch_warnings():  # the stand-in never steps: mmengine warns about the order
        warnings.simplefilter('ignore')
        replayed = runner._build_param_scheduler(config, OptimWrapper(optimizer=stand_in))
        epoch_length = (len(runner.train_dataloader)
                        if isinstance(runner.train_loop, EpochBasedTrainLoop) else None)
        for iteration in range(runner.iter):
            for scheduler in replayed:
                if not scheduler.by_epoch:
                    scheduler.step()
            if epoch_length and (iteration + 1) % epoch_length == 0 and \
                    (iteration + 1) // epoch_length <= runner.epoch:
                for scheduler in replayed:
                    if scheduler.by_epoch:
                        scheduler.step()

    groups = _param_groups(runner)
    index = [distinct.index(lr) for lr in config_lrs]
    for group, lr in zip(groups, config_lrs):
        group['lr'] = group['initial_lr'] = lr
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        rebuilt = runner._build_param_scheduler(copy.deepcopy(runner.cfg.param_scheduler),
                                                runner.optim_wrapper)
    for new, old in zip(rebuilt, replayed):
        new.last_step, new._global_step = old.last_step, old._global_step
        new._last_value = [old._last_value[i] for i in index]
    for group, i in zip(groups, index):
        group['lr'] = stand_in.param_groups[i]['lr']
    return rebuilt
