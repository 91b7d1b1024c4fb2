"""Read a downloaded checkpoint without running any code in it.

Two kinds of files reach the converter:

- ``torch.save`` files (``.pth``): read with ``torch.load(weights_only=True)`` plus the numpy and
  mmengine types restv2_mm already allows (:func:`restv2_mm.engine.load_local_checkpoint`).
  Detectron2's ``trainer``/``optimizer``/``scheduler`` entries and mmcv 1.x's ``meta`` hold
  only tensors, numbers, strings and plain containers, so nothing more needs allowing.
- plain pickles (Detectron2's model-zoo ``.pkl``: ``{'model': {name: numpy array}, ...}``,
  written by Python 2 or 3): read by :class:`ArrayUnpickler`, which builds numpy arrays and
  plain containers and refuses every other global a pickle names.

The kind is told from the bytes, not the file name: a zip archive is a torch file; a pickle
whose first object is torch's legacy magic number is a pre-1.6 torch file; any other pickle is
a plain one.
"""
import _codecs
import collections
import io
import os.path as osp
import pickle

import numpy as np

from ..engine.checkpoint_compat import load_local_checkpoint
from ..engine.checkpoint_files import CheckpointFileError, check_checkpoint_file

# torch.serialization's LEGACY magic number: the first object of a pre-1.6 torch.save file.
_TORCH_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_MULTIARRAY = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
# (module, name) -> object: what numpy arrays and plain containers pickle as, under numpy 1.x
# and 2.x module names, written by Python 2 (``__builtin__``) or 3.
_ALLOWED_GLOBALS = {
    **{(module, '_reconstruct'): _MULTIARRAY._reconstruct
       for module in ('numpy.core.multiarray', 'numpy._core.multiarray')},
    **{(module, 'scalar'): _MULTIARRAY.scalar
       for module in ('numpy.core.multiarray', 'numpy._core.multiarray')},
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    # protocol <= 2 pickles ``bytes`` (an array's data) as _codecs.encode(text, 'latin1')
    ('_codecs', 'encode'): _codecs.encode,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    **{(module, name): kind for module in ('builtins', '__builtin__')
       for name, kind in (('set', set), ('frozenset', frozenset))},
}


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle named a global that is neither a numpy array type nor a plain container."""


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can only build numpy arrays and plain containers.

    Every global the pickle stream names is looked up in a fixed table; anything else (a class
    whose constructor or ``__setstate__`` runs code, ``os.system``, ``builtins.eval``, ...)
    raises :class:`pickle.UnpicklingError` before it is resolved, so nothing in the file runs.
    """

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(
                f'{module}.{name} is not allowed: only numpy arrays and plain containers are '
                'read from a pickle') from None

    def persistent_load(self, pid):
        raise ForbiddenGlobalError('persistent ids are not allowed in a plain pickle')


def load_array_pickle(path: str):
    """Everything in a plain pickle of numpy arrays and containers (Python 2 strings as latin1)."""
    with open(path, 'rb') as f:
        return ArrayUnpickler(f, encoding='latin1').load()


def _is_zip(path: str) -> bool:
    with open(path, 'rb') as f:
        return f.read(4) == b'PK\x03\x04'


def read_checkpoint(path: str):
    """The object stored in a local checkpoint file (``.pth`` or plain ``.pkl``), safely.

    A missing, empty, truncated or non-checkpoint file raises an error naming the file and the
    problem (:class:`~restv2_mm.engine.checkpoint_files.CheckpointFileError`, or
    FileNotFoundError); a pickle that names anything but arrays and containers raises
    :class:`~restv2_mm.engine.checkpoint_files.CheckpointFileError` saying what it named.
    """
    path = osp.expanduser(str(path))
    check_checkpoint_file(path)
    if _is_zip(path):
        return load_local_checkpoint(path, map_location='cpu')
    with open(path, 'rb') as f:
        data = f.read()
    try:
        unpickler = ArrayUnpickler(io.BytesIO(data), encoding='latin1')
        first = unpickler.load()
    except ForbiddenGlobalError as err:
        raise CheckpointFileError(f'checkpoint {path} was refused: {err}. No code in a '
                                  'downloaded file is run.') from err
    except Exception as err:  # EOFError, ValueError, ...: the stream ends or is not a pickle
        raise CheckpointFileError(
            f'checkpoint {path} is truncated or not a pickle ({len(data)} bytes; '
            f'{type(err).__name__}: {err}): it was not completely written or downloaded') from err
    if isinstance(first, int) and first == _TORCH_LEGACY_MAGIC:
        return load_local_checkpoint(path, map_location='cpu')
    return first
