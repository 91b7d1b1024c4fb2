"""Crash-safe checkpoints and exact resumption for mmengine 0.10.7's Runner.

What mmengine does by itself, and what is changed here (applied by ``import restv2_mm``):

* Checkpoints are written in place (a kill leaves a truncated file): writes become atomic
  (:mod:`restv2_mm.engine.atomic_io`), and each new checkpoint is checked to be a complete
  archive before ``last_checkpoint`` points at it.
* ``CheckpointHook(max_keep_ckpts=N)`` deletes the oldest checkpoint *before* writing the new one,
  so with N=1 a kill during the write leaves nothing: the deletion is deferred until the new
  checkpoint is complete.
* ``--resume`` with no path trusts ``last_checkpoint`` blindly: it now picks the newest complete
  checkpoint and says which and why (:func:`find_resumable_checkpoint`).
* Only the seed is saved, so a resumed run draws different random numbers (augmentation,
  drop-path) than the uninterrupted one: the python, numpy and torch RNG states of every rank
  are saved in ``meta['rng_states']`` and restored on resume, right before the first batch the
  resumed run trains on (``IterBasedTrainLoop`` first replays the skipped batches' data loading,
  which consumes random numbers).
"""
import random
from typing import List, Optional

import numpy as np
import torch
from mmengine.logging import print_log

from .checkpoint_files import CheckpointFileError, checkpoint_problem, find_resumable_checkpoint

RNG_KEY = 'rng_states'


# ----------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict:
    """This process's python / numpy / torch (and CUDA) RNG states, as weights-only-loadable data."""
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = dict(python=random.getstate(),
                 numpy=dict(kind=kind, key=torch.from_numpy(key.astype(np.int64)), pos=int(pos),
                            has_gauss=int(has_gauss), gauss=float(gauss)),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state['numpy']
    np.random.set_state((numpy_state['kind'], numpy_state['key'].numpy().astype(np.uint32),
                         numpy_state['pos'], numpy_state['has_gauss'], numpy_state['gauss']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        if len(state['cuda']) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state['cuda'])


def gather_rng_states() -> List[dict]:
    """Every rank's RNG state, in rank order (a collective: call it on all ranks)."""
    from mmengine.dist import all_gather_object, get_world_size
    state = capture_rng_state()
    if get_world_size() == 1:
        return [state]
    # When this checkpoint is the run's last step, gloo's worker threads may still be releasing
    # the gather's tensors as the script ends: restv2_mm.utils.launch.release_process_groups,
    # run at exit, joins them before the interpreter shuts down.
    return all_gather_object(state)


class _RestoreRngBeforeBatch:
    """Wraps IterBasedTrainLoop's data iterator: after the ``skip`` batches the resumed loop
    replays, restore the RNG state, so batch ``skip + 1`` sees the numbers it saw originally."""

    def __init__(self, iterator, skip: int, state: dict):
        self._iterator, self._skip, self._state = iterator, skip, state

    def __iter__(self):
        return self

    def __next__(self):
        if self._skip == 0 and self._state is not None:
            restore_rng_state(self._state)
            self._state = None
        self._skip -= 1
        return next(self._iterator)

    def __getattr__(self, name):
        return getattr(self._iterator, name)


def _schedule_rng_restore(runner, meta: Optional[dict]) -> None:
    from mmengine.dist import get_rank, get_world_size
    states = (meta or {}).get(RNG_KEY)
    if not states:
        print_log('The checkpoint has no RNG states (not written with restv2_mm): random numbers '
                  'after resuming differ from an uninterrupted run.', logger='current', level=30)
        return
    if len(states) != get_world_size():
        print_log(f'The checkpoint holds RNG states of {len(states)} processes, this run has '
                  f'{get_world_size()}: RNG states are not restored (only the seed).',
                  logger='current', level=30)
        return
    state = states[get_rank()]
    loop = runner.train_loop
    if hasattr(loop, 'dataloader_iterator') and loop.iter > 0:
        loop.dataloader_iterator = _RestoreRngBeforeBatch(loop.dataloader_iterator, loop.iter, state)
    else:
        restore_rng_state(state)
    print_log('Restored the RNG states of the checkpoint.', logger='current')


# ----------------------------------------------------------------------------- patches
class _DeferRemovals:
    """A file backend whose ``remove``/``rmtree`` are recorded instead of done."""

    def __init__(self, backend, deferred: list):
        self._backend, self._deferred = backend, deferred

    def remove(self, path):
        self._deferred.append(('remove', path))

    def rmtree(self, path):
        self._deferred.append(('rmtree', path))

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _patch_checkpoint_hook() -> None:
    from mmengine.hooks import CheckpointHook
    original = CheckpointHook._save_checkpoint_with_step
    if getattr(original, '_restv2_safe', False):
        return

    def _save_checkpoint_with_step(self, runner, step, meta):
        runner._restv2_rng_states = gather_rng_states()
        deferred: list = []
        backend = self.file_backend
        self.file_backend = _DeferRemovals(backend, deferred)
        try:
            original(self, runner, step, meta)
        finally:
            self.file_backend = backend
            runner._restv2_rng_states = None
        # Only now that the new checkpoint is complete and last_checkpoint names it.
        for action, path in deferred:
            getattr(backend, action)(path)

    _save_checkpoint_with_step._restv2_safe = True
    _save_checkpoint_with_step.__doc__ = original.__doc__
    CheckpointHook._save_checkpoint_with_step = _save_checkpoint_with_step


def _patch_runner() -> None:
    import mmengine.runner.checkpoint as checkpoint_module
    import mmengine.runner.runner as runner_module
    from mmengine.fileio import join_path
    from mmengine.runner import Runner

    save_checkpoint = Runner.save_checkpoint
    if getattr(save_checkpoint, '_restv2_safe', False):
        return

    def checked_save_checkpoint(self, out_dir, filename, file_client_args=None,
                                save_optimizer=True, save_param_scheduler=True, meta=None,
                                by_epoch=True, backend_args=None):
        meta = dict(meta or {})
        meta[RNG_KEY] = getattr(self, '_restv2_rng_states', None) or [capture_rng_state()]
        save_checkpoint(self, out_dir, filename, file_client_args, save_optimizer,
                        save_param_scheduler, meta, by_epoch, backend_args)
        from mmengine.dist import is_main_process
        path = join_path(out_dir, filename, backend_args=backend_args)
        if is_main_process() and '://' not in str(path):
            problem = checkpoint_problem(str(path))
            if problem is not None:  # raise before CheckpointHook points last_checkpoint at it
                raise CheckpointFileError(f'the checkpoint just written, {path}, {problem}')

    load_checkpoint = Runner.load_checkpoint

    def load_checkpoint_keeping_meta(self, filename, *args, **kwargs):
        checkpoint = load_checkpoint(self, filename, *args, **kwargs)
        self._restv2_loaded_meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
        return checkpoint

    resume = Runner.resume

    def resume_with_rng(self, filename, *args, **kwargs):
        self._restv2_loaded_meta = None
        resume(self, filename, *args, **kwargs)
        _schedule_rng_restore(self, self._restv2_loaded_meta)

    for new, old in ((checked_save_checkpoint, save_checkpoint),
                     (load_checkpoint_keeping_meta, load_checkpoint), (resume_with_rng, resume)):
        new.__doc__, new.__wrapped__, new._restv2_safe = old.__doc__, old, True
    Runner.save_checkpoint = checked_save_checkpoint
    Runner.load_checkpoint = load_checkpoint_keeping_meta
    Runner.resume = resume_with_rng
    # load_or_resume looks the function up in the runner module's namespace.
    runner_module.find_latest_checkpoint = find_resumable_checkpoint
    checkpoint_module.find_latest_checkpoint = find_resumable_checkpoint


def make_training_crash_safe() -> None:
    """Apply everything in this module's docstring to mmengine (idempotent)."""
    from .atomic_io import make_local_writes_atomic
    make_local_writes_atomic()
    _patch_checkpoint_hook()
    _patch_runner()
