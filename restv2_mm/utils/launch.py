"""Runtime adjustments that tools/train.py and tools/test.py make before building a Runner.

mmengine 0.10.7 assumes CUDA in two places that matter here: ``AmpOptimWrapper`` refuses to be
built without a GPU, and the ``pytorch`` launcher calls ``torch.cuda.set_device`` and wraps the
model in DDP with ``device_ids=[LOCAL_RANK]``. Without CUDA we fall back to fp32 and to a gloo
process group over CPU processes, which is how the multi-GPU path is exercised on CPU machines.
"""
import os

import torch
import torch.distributed as dist
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


def shutdown_distributed() -> bool:
    """End a distributed run that succeeded: wait for every rank, then destroy the process
    group. True if there was one.

    mmengine does neither, and a rank can then abort after its work is done ('terminate called
    without an active exception', SIGABRT, so torchrun reports the whole run as failed). A
    last collective such as the evaluator's broadcast passes Python tensors to gloo; the worker
    thread that frees them needs the GIL, and when the main thread runs on to interpreter
    shutdown first, that thread is killed inside a C++ destructor (pytorch/pytorch#190489).
    ``barrier`` releases the GIL while it waits, so those frees finish before it returns, and
    its own work holds no Python tensors (the RNG gather before each checkpoint ends with one
    for the same reason). Not called on errors: a rank that raised must not wait for peers that
    may never arrive.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.barrier()
    dist.destroy_process_group()
    return True


def _sync_bn_to_bn(model_cfg) -> bool:
    """Turn every ``norm_cfg`` of type SyncBN / MMSyncBN in a model config into BN."""
    changed = False
    for node in iter_config_dicts(model_cfg):
        if node.get('type') in ('SyncBN', 'MMSyncBN'):
            node['type'] = 'BN'
            changed = True
    return changed
