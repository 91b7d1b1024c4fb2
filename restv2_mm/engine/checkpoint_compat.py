"""Let mmengine 0.10.x read its own checkpoints on torch >= 2.6 without unsafe unpickling.

torch 2.6 made ``torch.load(weights_only=True)`` the default. mmengine 0.10.7 calls
``torch.load`` without the argument, and its checkpoints hold a few non-tensor objects (the
message hub's ``HistoryBuffer`` with numpy arrays inside), so ``--resume`` and ``load_from`` die
with "Weights only load failed". Switching safety off for every file would let any downloaded
pickle run code; instead we keep ``weights_only=True`` and allow-list exactly the types mmengine
writes, for the duration of each load.
"""
import inspect
import os.path as osp
import pickle
from typing import Iterable, List

import numpy as np
import torch

from .checkpoint_files import CheckpointFileError, check_checkpoint_file

_EXTRA_GLOBALS: List[object] = []


def _history_buffer_getattr(obj, name):
    """``getattr`` exactly as far as mmengine's ``HistoryBuffer`` pickles it, and no further.

    ``HistoryBuffer.__getstate__`` stores the class's statistics methods (``HistoryBuffer.min``,
    ``.max``, ...), which pickle writes as ``getattr(HistoryBuffer, 'min')``; every checkpoint a
    Runner saves holds them. The real ``getattr`` would let a crafted file walk from any allowed
    object to arbitrary code, so only public functions defined on ``HistoryBuffer`` resolve.
    """
    from mmengine.logging import HistoryBuffer
    if (obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_')
            and inspect.isfunction(HistoryBuffer.__dict__.get(name))):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'getattr({obj!r}, {name!r}) is not allowed in a checkpoint')


def mmengine_checkpoint_globals() -> List[object]:
    """The non-tensor types found in checkpoints written by mmengine's Runner."""
    from mmengine.logging import HistoryBuffer
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    numpy_dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8,
                                                np.int16, np.int32, np.int64, np.uint8, np.bool_)]
    return [HistoryBuffer, multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype,
            *numpy_dtypes, (_history_buffer_getattr, 'builtins.getattr'), *_EXTRA_GLOBALS]


def allow_checkpoint_globals(extra: Iterable[object]) -> None:
    """Allow more types (e.g. a custom hook's state) in checkpoints loaded through mmengine."""
    _EXTRA_GLOBALS.extend(extra)


def load_local_checkpoint(filename: str, map_location=None):
    """Drop-in for mmengine's ``load_from_local``: ``weights_only=True`` plus the allow-list.

    A missing, empty, truncated or non-checkpoint file raises an error that names the file and
    the problem (:class:`~restv2_mm.engine.checkpoint_files.CheckpointFileError`) instead of a
    pickle or zip traceback.
    """
    filename = osp.expanduser(filename)
    check_checkpoint_file(filename)
    try:
        with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle errors come as several types; add the fix and re-raise
        if 'Weights only load failed' not in str(err):
            raise CheckpointFileError(
                f'checkpoint {filename} could not be read ({type(err).__name__}: {err}); is it a '
                'complete PyTorch checkpoint?') from err
        raise RuntimeError(
            f'{filename} holds objects beyond the tensors and mmengine state that restv2_mm allows '
            'when loading. If you trust this file, allow the types named below with '
            '`restv2_mm.engine.allow_checkpoint_globals([...])` before loading.\n' + str(err)
        ) from err


def allow_mmengine_checkpoints() -> None:
    """Route mmengine's local-file checkpoint loading through :func:`load_local_checkpoint`."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)
