"""Stop a diverging run at its first non-finite loss, with an error that says what to do next.

mmengine trains on through ``nan`` losses: the weights turn to ``nan``, every later checkpoint
is useless, ``max_keep_ckpts`` deletes the good ones and the run ends with exit code 0.
:class:`StopOnNonFiniteLossHook` (registered as ``type='StopOnNonFiniteLossHook'`` in
MMDetection's, MMSegmentation's and mmengine's ``HOOKS``; on in every config of this project)
checks each iteration's loss terms, and the gradient norm where the optimizer wrapper clips
gradients, and raises :class:`NonFiniteLossError` naming the iteration, the non-finite terms,
the lr, and the newest checkpoint to resume from. It runs before the checkpoint hook, so
nothing of the diverged iteration is saved (and :mod:`restv2_mm.engine.crash_safe_training`
refuses to write any checkpoint whose state holds nan or inf).

Cost: none beyond reading Python floats. mmengine's ``RuntimeInfoHook`` (priority VERY_HIGH)
already copies every loss term to the host for the log; this hook reads those floats from the
message hub, and the gradient norm the optimizer wrapper logged. Two cases need device values
and read them one iteration late, when the device has long finished them:

* Distributed runs: each rank's losses differ, so the ranks agree on one flag per iteration
  (an asynchronous all-reduce of a one-element tensor computed on the device from the loss
  tensors). The flag of iteration ``i`` is read at iteration ``i + 1``, before any checkpoint,
  before validation and at the end of training; when it is set, every rank raises the same
  error for iteration ``i``, with each rank's non-finite terms. The gradient norm is the same
  on every rank (computed from all-reduced gradients) and is checked at once.
* AMP with a dynamic loss scale (``AmpOptimWrapper``): non-finite gradients are expected now
  and then; the scaler skips that update and halves the scale. The scale tensor is copied on
  the device after each step and compared one iteration later: every skipped update is logged,
  and the run stops only when ``max_skips_in_a_row`` updates in a row were skipped or the scale
  fell below ``min_loss_scale``. Non-finite loss terms are logged as warnings then (the scale is
  the same on every rank, so ranks need no flag). A static loss scale is checked like fp32.
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log

from .checkpoint_files import last_checkpoint_of


class NonFiniteLossError(FloatingPointError):
    """A training loss (or gradient norm) became nan or inf; the message names the iteration,
    the non-finite terms, the lr and the newest checkpoint to resume from."""


def resume_advice(work_dir: str) -> str:
    """What to do after a divergence: which checkpoint to resume from, and how."""
    newest = last_checkpoint_of(work_dir)
    lower = ('Lower the lr (optimizer.lr in the config, or the param_scheduler step that raised '
             'it)')
    if newest is None:
        return f'No checkpoint was written before. {lower} and train again.'
    return (f'The newest checkpoint, {newest}, has finite weights and optimizer state '
            f'(checkpoints with nan or inf are never written). {lower} and resume from it: '
            f'`--resume {newest}` (or `--resume` alone); the resumed run follows the changed '
            "config's lr and schedule.")


def lr_snapshot(optim_wrapper) -> List[Tuple[float, float]]:
    """``(lr, initial_lr)`` of every param group now (the param schedulers change them after
    the iteration)."""
    return [(group['lr'], group.get('initial_lr', group['lr']))
            for wrapper in _wrappers(optim_wrapper)
            for group in wrapper.optimizer.param_groups if 'lr' in group]


def describe_lr(snapshot: List[Tuple[float, float]]) -> str:
    """``lr 6e+08 (1e+12 x the config's 0.0006)``: the lr of an iteration and how it compares
    with the config's starting lr (``initial_lr``, which the param schedulers scale)."""
    if not snapshot:
        return 'lr unknown'
    lrs = [float(lr) for lr, _ in snapshot]
    text = (f'lr {lrs[0]:.3g}' if min(lrs) == max(lrs) else
            f'lr {min(lrs):.3g} to {max(lrs):.3g} over {len(lrs)} parameter groups')
    top, initial = max(snapshot, key=lambda pair: float(pair[0]))
    top, initial = float(top), float(initial)
    if initial > 0 and top != initial:
        text += f" ({top / initial:.3g} x the config's {initial:.3g})"
    return text


def _wrappers(optim_wrapper) -> list:
    from mmengine.optim import OptimWrapperDict
    if isinstance(optim_wrapper, OptimWrapperDict):
        return list(optim_wrapper.values())
    return [optim_wrapper]


def _terms_text(terms: Dict[str, float]) -> str:
    return ', '.join(f'{name} = {value}' for name, value in terms.items())


class StopOnNonFiniteLossHook(Hook):
    """Raise :class:`NonFiniteLossError` at the first iteration whose loss or gradient norm is
    not finite (see the module docstring for AMP and distributed runs).

    Args:
        check_grad_norm: also stop on a non-finite gradient norm (logged by the optimizer
            wrapper when ``clip_grad`` is set; fp32 and static-scale AMP only).
        max_skips_in_a_row: dynamic-scale AMP: stop after this many updates in a row were
            skipped by the loss scaler (16 halvings take the default initial scale 2**16 to 1).
        min_loss_scale: dynamic-scale AMP: stop when the scale falls below this (below 1 the
            gradients overflow float16 even unscaled).
    """

    # After RuntimeInfoHook (VERY_HIGH) has read the losses; before the logger, the param
    # scheduler and the checkpoint hook.
    priority = 'ABOVE_NORMAL'

    def __init__(self, check_grad_norm: bool = True, max_skips_in_a_row: int = 16,
                 min_loss_scale: float = 1.0):
        if not isinstance(max_skips_in_a_row, int) or max_skips_in_a_row < 1:
            raise ValueError(
                f'max_skips_in_a_row must be a positive int, got {max_skips_in_a_row!r}')
        if not (isinstance(min_loss_scale, (int, float)) and min_loss_scale >= 0):
            raise ValueError(f'min_loss_scale must be a number >= 0, got {min_loss_scale!r}')
        self.check_grad_norm = check_grad_norm
        self.max_skips_in_a_row = max_skips_in_a_row
        self.min_loss_scale = float(min_loss_scale)
        self._pending = None
        self._scalers: list = []

    # ------------------------------------------------------------------------- hook stages
    def before_train(self, runner) -> None:
        from mmengine.dist import get_world_size
        from mmengine.hooks import RuntimeInfoHook
        hooks = list(runner.hooks)
        runtime_info = [i for i, hook in enumerate(hooks) if isinstance(hook, RuntimeInfoHook)]
        mine = hooks.index(self) if self in hooks else len(hooks)
        # Losses are read as floats from the message hub when RuntimeInfoHook put them there
        # earlier in this same stage; otherwise from the tensors (one transfer per term).
        self._losses_in_hub = bool(runtime_info) and runtime_info[0] < mine
        self._distributed = get_world_size() > 1
        self._pending = None
        self._grad_norm_seen = {}
        self._fresh_grad_norms(runner)  # norms restored by a resume are not this run's
        self._scalers = []
        for wrapper in _wrappers(runner.optim_wrapper):
            scaler = getattr(wrapper, 'loss_scaler', None)
            # AmpOptimWrapper keeps the scale fixed when _scale_update_param is set (static).
            if (scaler is not None and scaler.is_enabled()
                    and getattr(wrapper, '_scale_update_param', None) is None):
                self._scalers.append(dict(scaler=scaler, previous=scaler.get_scale(),
                                          snapshot=None, in_a_row=0, first_skip=None))
        self._amp = bool(self._scalers)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        self.settle(runner)
        if self._amp:
            self._track_loss_scale(runner)
        if not outputs:
            return
        losses = self._loss_values(runner, outputs)
        bad = {name: value for name, value in losses.items() if not math.isfinite(value)}
        if self._amp:
            if bad:
                print_log(f'{self._where(runner, batch_idx)}: loss not finite under AMP '
                          f'({_terms_text(bad)}); the loss scaler skips this update.',
                          logger='current', level=30)
            return
        grad_norms = self._fresh_grad_norms(runner) if self.check_grad_norm else {}
        bad_norms = {name: value for name, value in grad_norms.items() if not math.isfinite(value)}
        # A gradient norm is computed from all-reduced gradients: the same on every rank.
        if bad_norms or (bad and not self._distributed):
            self._stop(runner, self._report(runner, batch_idx, bad), extra=bad_norms)
        if self._distributed:
            self._pending = (self._agree_async(outputs, bool(bad)),
                             self._report(runner, batch_idx, bad))

    def before_val(self, runner) -> None:
        self.settle(runner)  # no validation of a diverged model

    def after_train(self, runner) -> None:
        self.settle(runner)
        if self._amp:
            self._track_loss_scale(runner, final=True)

    # ------------------------------------------------------------------------- checks
    def settle(self, runner) -> None:
        """Read the ranks' verdict on the previous iteration (distributed runs) and stop every
        rank if any rank saw a non-finite loss. A collective: the checkpoint hook calls it on
        every rank before saving."""
        if self._pending is None:
            return
        (work, flag), report = self._pending
        self._pending = None
        work.wait()
        if int(flag.item()) == 0:
            return
        from mmengine.dist import all_gather_object
        per_rank = all_gather_object(report['terms'])
        self._stop(runner, report, per_rank=per_rank)

    def _loss_values(self, runner, outputs: dict) -> Dict[str, float]:
        values = {}
        for name, value in outputs.items():
            if 'loss' not in name:  # what mmengine's parse_losses sums (accuracies are logged too)
                continue
            if isinstance(value, (int, float)):
                values[name] = float(value)
            elif self._losses_in_hub:
                values[name] = float(runner.message_hub.get_scalar(f'train/{name}').current())
            elif isinstance(value, torch.Tensor) and value.numel() == 1:
                values[name] = float(value)
        return values

    def _fresh_grad_norms(self, runner) -> Dict[str, float]:
        """Gradient norms the optimizer wrappers logged in this iteration (``clip_grad``);
        a norm from an earlier update (gradient accumulation, resumed history) is skipped."""
        norms = {}
        for key, buffer in runner.message_hub.log_scalars.items():
            if not (key.startswith('train/') and key.endswith('grad_norm')):
                continue
            history = buffer.data[0]  # replaced by a new array on every update
            if self._grad_norm_seen.get(key) is not history and len(history):
                norms[key[len('train/'):]] = float(history[-1])
            self._grad_norm_seen[key] = history
        return norms

    def _agree_async(self, outputs: dict, locally_bad: bool):
        """Start an all-reduce (max) of this rank's 'loss not finite' flag; no host sync."""
        import torch.distributed as dist
        from mmengine.dist import get_comm_device
        device = get_comm_device()
        terms = [value.detach().float().reshape(()) for name, value in outputs.items()
                 if 'loss' in name and isinstance(value, torch.Tensor) and value.numel() == 1]
        if terms and all(term.device == device for term in terms):
            flag = torch.isfinite(torch.stack(terms)).logical_not().any().to(torch.int32)
            flag = flag.reshape(1)
        else:
            flag = torch.tensor([int(locally_bad)], dtype=torch.int32, device=device)
        return dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True), flag

    def _track_loss_scale(self, runner, final: bool = False) -> None:
        """Compare the scale copied after the previous update with the one before it: a
        smaller scale means the scaler skipped that update."""
        for state in self._scalers:
            if state['snapshot'] is not None:
                iteration, snapshot = state['snapshot']
                scale = float(snapshot)
                if scale < state['previous']:
                    state['in_a_row'] += 1
                    state['first_skip'] = state['first_skip'] or iteration
                    print_log(f'AMP: iteration {iteration} skipped its update (gradients not '
                              f"finite at loss scale {state['previous']:g}); loss scale now "
                              f'{scale:g}.', logger='current')
                else:
                    state['in_a_row'], state['first_skip'] = 0, None
                state['previous'] = scale
                if state['in_a_row'] >= self.max_skips_in_a_row or scale < self.min_loss_scale:
                    self._stop_amp(runner, state, iteration, scale)
            state['snapshot'] = None
            if not final:
                current = _scale_tensor(state['scaler'])
                if current is not None:
                    state['snapshot'] = (runner.iter + 1, current.detach().clone())

    # ------------------------------------------------------------------------- errors
    def _report(self, runner, batch_idx: int, terms: Dict[str, float]) -> dict:
        return dict(where=self._where(runner, batch_idx), lr=lr_snapshot(runner.optim_wrapper),
                    terms=terms)

    def _where(self, runner, batch_idx: int) -> str:
        from mmengine.runner import EpochBasedTrainLoop
        where = f'iteration {runner.iter + 1}'
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            where += f' (epoch {runner.epoch + 1}, batch {batch_idx + 1})'
        return where

    def _stop(self, runner, report: dict, per_rank: Optional[List[dict]] = None,
              extra: Optional[Dict[str, float]] = None) -> None:
        found = []
        if per_rank is not None:
            found.append('; '.join(f'rank {rank}: {_terms_text(terms) or "all finite"}'
                                   for rank, terms in enumerate(per_rank)))
        elif report['terms']:
            found.append(_terms_text(report['terms']))
        if extra:
            found.append(_terms_text(extra))
        message = (f"Training diverged at {report['where']}: not finite: {'; '.join(found)}; "
                   f"{describe_lr(report['lr'])}. Stopped before this iteration was checkpointed. "
                   + resume_advice(runner.work_dir))
        runner.logger.error(message)
        raise NonFiniteLossError(message)

    def _stop_amp(self, runner, state: dict, iteration: int, scale: float) -> None:
        if scale < self.min_loss_scale:
            why = (f'the loss scale fell to {scale:g}, below '
                   f'min_loss_scale={self.min_loss_scale:g}: the gradients are not finite even '
                   'unscaled')
        else:
            why = (f"{state['in_a_row']} updates in a row were skipped (iterations "
                   f"{state['first_skip']}-{iteration}, max_skips_in_a_row="
                   f'{self.max_skips_in_a_row}): the gradients stay non-finite at loss scale '
                   f'{scale:g}')
        message = (f'Training diverged under AMP at iteration {iteration}: {why}; '
                   f'{describe_lr(lr_snapshot(runner.optim_wrapper))}. '
                   + resume_advice(runner.work_dir))
        runner.logger.error(message)
        raise NonFiniteLossError(message)


def _scale_tensor(scaler) -> Optional[torch.Tensor]:
    """The scaler's scale tensor without a host sync (None before its first update)."""
    get_async = getattr(scaler, '_get_scale_async', None)
    return get_async() if get_async is not None else getattr(scaler, '_scale', None)


def settle_nonfinite_checks(runner) -> None:
    """Let every :class:`StopOnNonFiniteLossHook` of ``runner`` read its pending verdict (call
    on every rank before saving a checkpoint: a diverged state is never saved)."""
    for hook in runner.hooks:
        if isinstance(hook, StopOnNonFiniteLossHook):
            hook.settle(runner)
