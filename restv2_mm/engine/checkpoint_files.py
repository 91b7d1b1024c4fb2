"""Is a file a complete PyTorch checkpoint? And which checkpoint should ``--resume`` pick?

``torch.save`` writes a zip archive whose central directory comes last, so a file cut short
anywhere (killed writer, full disk, interrupted download) has no central directory: reading the
directory and the small ``data.pkl`` record tells complete from truncated without loading the
tensors. Files in torch's legacy (pre-1.6) format are plain pickles and are judged at load time.
``--resume`` also passes over checkpoints of a diverged run (nan or inf in the weights, buffers
or optimizer state, :mod:`restv2_mm.engine.finite_state`), which takes one read of the file.
"""
import os
import os.path as osp
import re
import zipfile
from typing import List, Optional

from mmengine.logging import print_log

from .atomic_io import remove_stale_temporary_files

LAST_CHECKPOINT = 'last_checkpoint'
# The names CheckpointHook's default ``filename_tmpl`` writes: epoch_3.pth, iter_8000.pth.
_STEP_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')
_LEGACY_PICKLE = b'\x80'  # pickle protocol >= 2 opcode: torch's pre-zip format starts with it


class CheckpointFileError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def _looks_like(head: bytes) -> str:
    kinds = ((b'\x89PNG', 'a PNG image'), (b'\xff\xd8\xff', 'a JPEG image'), (b'GIF8', 'a GIF image'),
             (b'%PDF', 'a PDF'), (b'\x1f\x8b', 'a gzip archive'), (b'<', 'an HTML/XML page'),
             (b'{', 'a JSON file'))
    for magic, kind in kinds:
        if head.startswith(magic):
            return kind
    try:
        head.decode('utf-8')
        return 'a text file'
    except UnicodeDecodeError:
        return 'unknown binary data'


def checkpoint_problem(path: str) -> Optional[str]:
    """What is wrong with the checkpoint file at ``path`` (a phrase), or None if it looks whole."""
    if not osp.isfile(path):
        return 'does not exist' if not osp.exists(path) else 'is not a file'
    size = osp.getsize(path)
    if size == 0:
        return 'is empty (0 bytes): it was never completely written or downloaded'
    with open(path, 'rb') as f:
        head = f.read(16)
    if head.startswith(b'PK\x03\x04'):
        try:
            with zipfile.ZipFile(path) as archive:
                records = [n for n in archive.namelist() if n.endswith('/data.pkl') or n == 'data.pkl']
                if not records:
                    return 'is a zip archive but not a PyTorch checkpoint (it has no data.pkl)'
                archive.read(records[0])  # CRC-checked
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            return (f'is truncated or corrupt ({size} bytes; {err}): it was not completely written '
                    'or downloaded')
        return None
    if head.startswith(_LEGACY_PICKLE):
        return None
    return f'is not a PyTorch checkpoint (it looks like {_looks_like(head)})'


def check_checkpoint_file(path: str, what: str = 'checkpoint') -> None:
    """Raise :class:`CheckpointFileError` (or FileNotFoundError) naming ``path`` and its problem."""
    problem = checkpoint_problem(path)
    if problem == 'does not exist':
        raise FileNotFoundError(f'{what} {path} does not exist')
    if problem is not None:
        raise CheckpointFileError(f'{what} {path} {problem}')


def _step(path: str) -> int:
    match = _STEP_NAME.match(osp.basename(path))
    return int(match[2]) if match else -1


def _read_pointer(pointer: str) -> Optional[str]:
    try:
        with open(pointer) as f:
            return f.read().strip() or None
    except OSError:
        return None


def last_checkpoint_of(work_dir: str) -> Optional[str]:
    """The checkpoint ``work_dir/last_checkpoint`` names, or None (no file, or an empty one)."""
    pointer = osp.join(work_dir, LAST_CHECKPOINT)
    return _read_pointer(pointer) if osp.exists(pointer) else None


def resume_candidates(work_dir: str) -> List[str]:
    """Checkpoints ``--resume`` may continue from, best first.

    1. ``epoch_N.pth``/``iter_N.pth`` files written after ``last_checkpoint`` was last updated
       (the job died between renaming a new checkpoint into place and updating the pointer),
       highest N first;
    2. the file ``last_checkpoint`` names;
    3. every other ``epoch_N.pth``/``iter_N.pth``, highest N first (then newest first).
    """
    pointer = osp.join(work_dir, LAST_CHECKPOINT)
    named = _read_pointer(pointer) if osp.exists(pointer) else None
    directories = {osp.abspath(work_dir)}
    if named is not None and '://' not in named:
        directories.add(osp.dirname(osp.abspath(named)))
    found = []
    for directory in directories:
        if osp.isdir(directory):
            found += [osp.join(directory, n) for n in os.listdir(directory) if _STEP_NAME.match(n)]
    found.sort(key=lambda p: (_step(p), osp.getmtime(p)), reverse=True)
    named_abs = osp.abspath(named) if named is not None and '://' not in named else named
    pointer_time = osp.getmtime(pointer) if osp.exists(pointer) else None
    after_pointer = [p for p in found if pointer_time is not None and named is not None
                     and osp.getmtime(p) > pointer_time and _step(p) > _step(named)]
    ordered = after_pointer + ([named] if named is not None else [])
    ordered += [p for p in found if p not in after_pointer and osp.abspath(p) != named_abs]
    return ordered


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """Drop-in for mmengine's ``find_latest_checkpoint``: the newest COMPLETE checkpoint whose
    training state is FINITE.

    Skips (and logs) truncated or empty files instead of handing them to ``torch.load``, and
    checkpoints whose weights, buffers or optimizer state hold nan or inf (a diverged run's;
    this reads the candidate once); removes temporary files of killed writers. Returns None
    when the work dir holds no checkpoint (a fresh start, as in mmengine); raises when it holds
    checkpoints but none is usable, rather than silently training from scratch. In a
    distributed run rank 0 decides and tells the others (one read of the file, not one per rank).
    """
    from mmengine.dist import broadcast_object_list, get_world_size, is_main_process
    if get_world_size() == 1:
        return _find_resumable_checkpoint(work_dir)
    outcome, error = [None], None
    if is_main_process():
        try:
            outcome = [(True, _find_resumable_checkpoint(work_dir))]
        except Exception as err:  # every rank must stop, not wait in the next collective
            outcome, error = [(False, f'{err}')], err
    broadcast_object_list(outcome, src=0)
    found, value = outcome[0]
    if error is not None:
        raise error
    if not found:
        raise CheckpointFileError(f'--resume: rank 0 could not choose a checkpoint: {value}')
    return value


def _find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    from mmengine.dist import is_main_process
    if is_main_process() and osp.isdir(work_dir):
        for tmp in remove_stale_temporary_files(work_dir):
            print_log(f'Removed {tmp}: a checkpoint that was being written when the job was killed.',
                      logger='current', level=30)
    pointer = osp.join(work_dir, LAST_CHECKPOINT)
    named = _read_pointer(pointer) if osp.exists(pointer) else None
    if osp.exists(pointer) and named is None:
        print_log(f'{pointer} is empty (the job was killed while updating it); looking for the '
                  f'newest complete checkpoint in {work_dir}.', logger='current', level=30)
    candidates = resume_candidates(work_dir)
    if not candidates:
        print_log(f'No checkpoint to resume from in {work_dir}: training starts from the beginning.',
                  logger='current')
        return None
    skipped = []
    for candidate in candidates:
        if '://' in candidate:  # a remote backend: let mmengine's loader judge it
            return candidate
        problem = checkpoint_problem(candidate) or _nonfinite_problem(candidate)
        if problem is None:
            if candidate != named:
                why = ('; '.join(skipped) if skipped else
                       f'{pointer} names {named}' if named else f'{pointer} is missing or empty')
                print_log(f'Resuming from {candidate}, the newest complete checkpoint with finite '
                          f'weights and optimizer state ({why}).', logger='current', level=30)
            return candidate
        skipped.append(f'skipped {candidate}: it {problem}')
        print_log(f'Not resuming from {candidate}: it {problem}.', logger='current', level=30)
    raise CheckpointFileError(f'--resume: no complete checkpoint in {work_dir} with finite '
                              'weights and optimizer state:\n  ' + '\n  '.join(skipped) +
                              '\nDelete the broken files to start from the beginning, or pass '
                              '`--resume PATH` with a good checkpoint.')


def _nonfinite_problem(path: str) -> Optional[str]:
    from .finite_state import describe_names, file_nonfinite_names
    try:
        names = file_nonfinite_names(path)
    except CheckpointFileError as err:  # e.g. a legacy (pre-zip) file cut inside its pickle
        return f'could not be read ({err})'
    if not names:
        return None
    return f'holds nan or inf (a diverged run) in {describe_names(names)}'

