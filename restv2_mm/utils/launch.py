"""Runtime adjustments that tools/train.py and tools/test.py make before building a Runner, and
the release of process groups at exit that ``import restv2_mm`` registers for every script.

mmengine 0.10.7 assumes CUDA in two places that matter here: ``AmpOptimWrapper`` refuses to be
built without a GPU, and the ``pytorch`` launcher calls ``torch.cuda.set_device`` and wraps the
model in DDP with ``device_ids=[LOCAL_RANK]``. Without CUDA we fall back to fp32 and to a gloo
process group over CPU processes, which is how the multi-GPU path is exercised on CPU machines.
"""
import atexit
import ctypes
import gc
import os
import sys
import warnings
import weakref

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as distributed_c10d
from mmengine.config import Config
from mmengine.logging import print_log

from .config import iter_config_dicts


def use_fp32_without_cuda(cfg: Config) -> bool:
    """Swap ``AmpOptimWrapper`` for fp32 ``OptimWrapper`` when there is no GPU; True if swapped."""
    optim_wrapper = cfg.get('optim_wrapper')
    if not optim_wrapper or optim_wrapper.get('type') != 'AmpOptimWrapper':
        return False
    if torch.cuda.is_available():
        return False
    optim_wrapper.type = 'OptimWrapper'
    for amp_only_key in ('loss_scale', 'dtype', 'use_fsdp'):
        optim_wrapper.pop(amp_only_key, None)
    print_log('No CUDA device: training in fp32 with OptimWrapper instead of the config\'s '
              'AmpOptimWrapper (mixed precision needs a GPU).', logger='current', level=30)
    return True


def setup_cpu_distributed(cfg: Config) -> bool:
    """With ``--launcher pytorch`` and no CUDA, run data-parallel over gloo on CPU processes.

    Initialises the process group ourselves (mmengine would call ``torch.cuda.set_device``)
    and builds DDP without ``device_ids``. Returns True when it applied.
    """
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return False
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    dist_cfg['backend'] = 'gloo'
    if not dist.is_initialized():
        options = {k: v for k, v in dist_cfg.items() if k != 'backend'}
        if 'timeout' in options:
            import datetime
            options['timeout'] = datetime.timedelta(seconds=options['timeout'])
        dist.init_process_group(backend='gloo', rank=int(os.environ['RANK']),
                                world_size=int(os.environ['WORLD_SIZE']), **options)
    wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel')
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None  # a CPU module: DDP must not be given devices
    cfg.model_wrapper_cfg = wrapper
    print_log(f'No CUDA device: data-parallel over gloo, rank {dist.get_rank()} of '
              f'{dist.get_world_size()} CPU processes.', logger='current')
    if _sync_bn_to_bn(cfg.get('model')):
        # torch's and mmcv's SyncBatchNorm only synchronise CUDA tensors and raise on CPU ones
        # in training; mmengine reverts them only in non-distributed runs.
        print_log('No CUDA device: the model\'s SyncBN layers become BN (statistics per '
                  'process; SyncBatchNorm needs CUDA).', logger='current')
    return True


def release_process_groups() -> bool:
    """Destroy every process group and join gloo's worker threads while the interpreter is
    whole; True if there was one. Local: it waits for no other rank, only for this rank's own
    threads to finish collectives it already started (on a clean ending, none).

    Why (docs/distributed.md has the backtrace): a ProcessGroupGloo runs collectives on worker
    threads, and after a collective completes its worker still drops the work item and with it
    the collective's tensors. Dropping a C++ reference to a tensor that has a Python object
    decrefs that object, which takes the GIL; when the main thread has begun ``Py_Finalize`` by
    then, CPython 3.11 ends the worker inside ``take_gil`` with ``pthread_exit``, whose unwinding
    meets a ``noexcept`` destructor: ``std::terminate``, SIGABRT ('terminate called without an
    active exception'), a failed torchrun job. Only ``~ProcessGroupGloo`` joins the workers, and
    left alone it runs during module teardown, when finalization has already begun. Here the
    last references are ours: ``destroy_process_group`` drops the registry's, ``gc.collect``
    frees the finished runner's cycles (DDP and its Reducer) while we still hold the groups, so
    no destructor runs with the GIL held, and dropping ours runs the destructor with the GIL
    released (torch's holder for process groups does that): a worker still dropping tensors
    takes the GIL and finishes before the join returns.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return False
    groups = list(distributed_c10d._world.pg_map)  # every group, the default one included
    survivors = [weakref.ref(group) for group in groups]
    dist.destroy_process_group()
    gc.collect()
    groups.clear()
    if any(ref() is not None for ref in survivors):
        warnings.warn('A torch.distributed process group is still referenced after '
                      'destroy_process_group (a Runner or DDP model kept alive, e.g. in a global '
                      'variable): its threads outlive this call and can abort the process while '
                      'the interpreter shuts down. Let the reference go before the script ends.')
    return True


_release_registered = False


def _release_process_groups_at_exit() -> None:
    if getattr(sys, 'last_value', None) is not None:  # dying of an uncaught exception
        _never_free_process_groups()
    else:
        release_process_groups()


def _never_free_process_groups() -> None:
    """A rank that raised may have collectives in flight that wait for ranks which will never
    join them, and destroying its groups (as torch's module teardown would) waits for those
    collectives until the group's timeout, 30 minutes by default. Its groups are never freed
    instead: the process leaves at once with its error, and the system closes its sockets."""
    if dist.is_available() and dist.is_initialized():
        for group in distributed_c10d._world.pg_map:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(group))


def release_process_groups_at_exit() -> None:
    """Run :func:`release_process_groups` when the interpreter exits; a process that ends on an
    uncaught exception leaves at once instead (:func:`_never_free_process_groups`).

    Called by ``import restv2_mm``, so it covers our tools, MMDetection's and MMSegmentation's
    own ``train.py`` / ``test.py`` with our configs (``custom_imports``), and any script that
    imports the package. ``atexit`` runs the earliest registration last: after every handler
    registered later, which could still use a group.
    """
    global _release_registered
    if not _release_registered:
        atexit.register(_release_process_groups_at_exit)
        _release_registered = True


def _sync_bn_to_bn(model_cfg) -> bool:
    """Turn every ``norm_cfg`` of type SyncBN / MMSyncBN in a model config into BN."""
    changed = False
    for node in iter_config_dicts(model_cfg):
        if node.get('type') in ('SyncBN', 'MMSyncBN'):
            node['type'] = 'BN'
            changed = True
    return changed
