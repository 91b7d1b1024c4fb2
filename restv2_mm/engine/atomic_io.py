"""Atomic local file writes: a file is either the old one, the complete new one, or absent.

mmengine 0.10.7 writes checkpoints with ``LocalBackend.put``: ``open(path, 'wb')`` then one
``write``. A job killed (or a disk that fills up) in between leaves a truncated ``iter_N.pth``
under the final name, which ``--resume`` then tries to unpickle. Here the bytes go to a temporary
name in the same directory, are flushed and fsync'ed, and only then renamed over the final name
(``os.replace`` is atomic on POSIX and Windows); the directory is fsync'ed so the rename itself
survives a power cut.
"""
import errno
import glob
import os
import os.path as osp
from pathlib import Path
from typing import List, Union

# Temporary files are ``<final name>.tmp-<pid>``: never matched by ``*.pth``, and the pid says
# whether the writer is still alive (see :func:`remove_stale_temporary_files`).
TMP_MARKER = '.tmp-'
CHUNK_BYTES = 8 << 20


def temporary_path(path: str) -> str:
    return f'{path}{TMP_MARKER}{os.getpid()}'


def _write_chunks(f, data: memoryview) -> None:
    """Write ``data`` in chunks (a separate function so a test can simulate a slow disk)."""
    for start in range(0, len(data), CHUNK_BYTES):
        f.write(data[start:start + CHUNK_BYTES])


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(data: Union[bytes, bytearray, memoryview], path: Union[str, Path]) -> None:
    """Write ``data`` to ``path`` so that ``path`` never holds a partial file.

    Creates the parent directory like mmengine's ``LocalBackend.put``. On any failure (disk full,
    permissions) the temporary file is removed, ``path`` keeps its previous content, and the
    error names the file.
    """
    path = osp.abspath(str(path))
    directory = osp.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, 'wb') as f:
            _write_chunks(f, memoryview(data).cast('B'))
            f.flush()
            os.fsync(f.fileno())
        written = osp.getsize(tmp)
        if written != len(data):
            raise OSError(errno.EIO, f'wrote {written} of {len(data)} bytes')
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            kept = 'its previous version is untouched' if osp.exists(path) else 'nothing was written'
            raise OSError(err.errno, f'could not write {path} ({err.strerror or err}); {kept}') from err
        raise
    _fsync_directory(directory)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporary_files(directory: str) -> List[str]:
    """Delete temporary files left in ``directory`` by writers that were killed; return them."""
    removed = []
    for tmp in glob.glob(osp.join(glob.escape(directory), f'*{TMP_MARKER}*')):
        pid = tmp.rsplit(TMP_MARKER, 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.remove(tmp)
                removed.append(tmp)
            except OSError:
                pass
    return removed


def make_local_writes_atomic() -> None:
    """Route mmengine's local ``put``/``put_text`` (checkpoints, dumped results) through
    :func:`atomic_write_bytes`."""
    from mmengine.fileio.backends.local_backend import LocalBackend
    if getattr(LocalBackend.put, '_restv2_atomic', False):
        return

    def put(self, obj: bytes, filepath) -> None:
        atomic_write_bytes(obj, filepath)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write_bytes(obj.encode(encoding), filepath)

    put._restv2_atomic = put_text._restv2_atomic = True
    put.__doc__ = 'Write bytes to ``filepath`` atomically (restv2_mm: temp file, fsync, rename).'
    put_text.__doc__ = 'Write text to ``filepath`` atomically (restv2_mm).'
    LocalBackend.put = put
    LocalBackend.put_text = put_text
