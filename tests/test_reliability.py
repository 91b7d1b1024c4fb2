"""Fast reliability checks: atomic writes, resume candidate selection, RNG state round trips,
named errors for bad checkpoint and image files at every entry point, and the exit of
distributed ranks (two gloo processes each; docs/distributed.md).

The slow, real-process versions (kill -9 during a checkpoint write, resume, odd images through
the tools) are in tests/test_reliability_e2e.py.
"""
import contextlib
import io
import os
import os.path as osp
import random
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import restv2_mm  # noqa: F401  (applies the patches under test)
from restv2_mm.engine import (CheckpointFileError, CorruptImageError, atomic_write_bytes,
                              capture_rng_state, checkpoint_problem, find_resumable_checkpoint,
                              image_bytes_problem, load_local_checkpoint, restore_rng_state)
from restv2_mm.engine import atomic_io

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def save(obj, path):
    torch.save(obj, path)
    return str(path)


def png_bytes(array=None):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8) if array is None else array).save(buffer, 'PNG')
    return buffer.getvalue()


def jpeg_bytes(size=(64, 48), exif_orientation=None):
    y, x = np.mgrid[0:size[1], 0:size[0]]
    image = Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))
    buffer = io.BytesIO()
    if exif_orientation is None:
        image.save(buffer, 'JPEG', quality=90)
    else:
        exif = image.getexif()
        exif[0x0112] = exif_orientation
        image.save(buffer, 'JPEG', quality=90, exif=exif)
    return buffer.getvalue()


@pytest.fixture
def good_checkpoint(tmp_path):
    return save({'state_dict': {'w': torch.arange(1000.)}, 'meta': {'iter': 3}}, tmp_path / 'good.pth')


def bad_files(tmp_path, good):
    """name -> (path, expected words in the error)."""
    data = open(good, 'rb').read()
    files = {
        'empty': (b'', 'is empty'),
        'truncated': (data[:len(data) // 2], 'truncated'),
        'png': (png_bytes(), 'looks like a PNG image'),
        'text': (b'not a checkpoint\n', 'looks like a text file'),
    }
    out = {}
    for name, (content, words) in files.items():
        path = tmp_path / f'{name}.pth'
        path.write_bytes(content)
        out[name] = (str(path), words)
    return out


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / 'sub' / 'file.bin'
    atomic_write_bytes(b'old', path)
    atomic_write_bytes(b'new content', path)
    assert path.read_bytes() == b'new content'
    assert os.listdir(path.parent) == ['file.bin']


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'iter_2.pth'
    path.write_bytes(b'previous')

    def disk_full(f, data):
        f.write(data[:3])
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(atomic_io, '_write_chunks', disk_full)
    with pytest.raises(OSError, match=r'could not write .*iter_2\.pth .*No space left.*untouched'):
        atomic_write_bytes(b'0123456789', path)
    assert path.read_bytes() == b'previous'
    assert os.listdir(tmp_path) == ['iter_2.pth']


def test_mmengine_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    """mmengine's save_checkpoint goes through LocalBackend.put, now a temp file + rename: while
    the bytes are being written, the final name does not exist."""
    from mmengine.runner.checkpoint import save_checkpoint
    target = tmp_path / 'iter_1.pth'
    seen = []

    def spy(f, data):
        seen.append((target.exists(), os.path.basename(f.name)))
        f.write(data)

    monkeypatch.setattr(atomic_io, '_write_chunks', spy)
    save_checkpoint({'state_dict': {'w': torch.ones(3)}}, str(target))
    assert seen == [(False, f'iter_1.pth.tmp-{os.getpid()}')]
    assert checkpoint_problem(str(target)) is None


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f'iter_4.pth.tmp-{dead}'
    stale.write_bytes(b'PK\x03\x04partial')
    live = tmp_path / f'iter_5.pth.tmp-{os.getpid()}'
    live.write_bytes(b'being written')
    assert atomic_io.remove_stale_temporary_files(str(tmp_path)) == [str(stale)]
    assert live.exists()


# ----------------------------------------------------------------------------- file checks
def test_checkpoint_problem_tells_complete_from_broken(tmp_path, good_checkpoint):
    assert checkpoint_problem(good_checkpoint) is None
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert checkpoint_problem(str(legacy)) is None
    assert checkpoint_problem(str(tmp_path / 'missing.pth')) == 'does not exist'
    for path, words in bad_files(tmp_path, good_checkpoint).values():
        assert words in checkpoint_problem(path)


def test_loader_names_file_and_problem(tmp_path, good_checkpoint):
    """What --resume, load_from, tools/test.py and tools/demo.py call (mmengine's loader)."""
    from mmengine.runner.checkpoint import _load_checkpoint
    for path, words in bad_files(tmp_path, good_checkpoint).values():
        with pytest.raises(CheckpointFileError) as info:
            _load_checkpoint(path, map_location='cpu')
        assert path in str(info.value) and words in str(info.value)
    with pytest.raises(FileNotFoundError, match='missing.pth does not exist'):
        load_local_checkpoint(str(tmp_path / 'missing.pth'))
    # A truncated legacy (non-zip) file has no directory to check: the load error still names it.
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': torch.ones(1000)}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:2000])  # cut in the tensor data, the bulk of a file
    with pytest.raises(CheckpointFileError, match=r'legacy\.pth could not be read'):
        load_local_checkpoint(str(legacy))


def test_backbone_pretrained_and_converter_name_bad_files(tmp_path, good_checkpoint):
    from mmdet.registry import MODELS

    from restv2_mm.converters import convert_checkpoint
    for name, (path, words) in bad_files(tmp_path, good_checkpoint).items():
        backbone = MODELS.build(dict(
            type='ResTv2', arch=dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                     num_heads=[1, 1, 2, 4]),
            init_cfg=dict(type='Pretrained', checkpoint=path)))
        with pytest.raises(CheckpointFileError, match=words):
            backbone.init_weights()
        with pytest.raises(CheckpointFileError, match=words):
            convert_checkpoint(path, str(tmp_path / f'{name}_converted.pth'))
        assert not osp.exists(tmp_path / f'{name}_converted.pth')


@pytest.fixture(scope='module')
def tiny_seg_config(tmp_path_factory):
    from test_reliability_e2e import seg_config

    from restv2_mm.datasets.tiny_ade20k import make_tiny_ade20k
    root = tmp_path_factory.mktemp('tiny_ade')
    make_tiny_ade20k(str(root / 'data'), num_train=2, num_val=1, height_range=(48, 48),
                     width_range=(48, 48))
    return seg_config(root, str(root / 'data'), max_iters=4)


@pytest.mark.slow  # one tool process each (~10 s)
@pytest.mark.parametrize('tool', ['test', 'demo', 'convert', 'train_resume', 'train_load_from'])
def test_tools_name_a_truncated_checkpoint(tmp_path, tool, good_checkpoint, tiny_seg_config):
    """Every entry point that reads a checkpoint ends with one line naming file and problem."""
    path, _ = bad_files(tmp_path, good_checkpoint)['truncated']
    config, work_dir = tiny_seg_config, str(tmp_path / 'w')
    image = tmp_path / 'image.png'
    image.write_bytes(png_bytes())
    commands = {
        'test': ['tools/test.py', config, path, '--work-dir', work_dir],
        'demo': ['tools/demo.py', str(image), config, path, '--out', str(tmp_path / 'o.png')],
        'convert': ['tools/convert_official.py', path, str(tmp_path / 'converted.pth')],
        'train_resume': ['tools/train.py', config, '--resume', path, '--work-dir', work_dir],
        'train_load_from': ['tools/train.py', config, '--work-dir', work_dir,
                            '--cfg-options', f'load_from={path}'],
    }
    result = subprocess.run([sys.executable, *commands[tool]], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith('restv2_mm.engine.checkpoint_files.CheckpointFileError'), \
        result.stderr[-3000:]
    assert path in last_line and 'truncated' in last_line


def toy_runner(work_dir, max_iters, **checkpoint):
    """A real mmengine Runner on a 3-parameter model: checkpoints in milliseconds."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            # Draws from all three generators, as augmentation and drop-path do.
            out = self.linear(torch.nn.functional.dropout(inputs, 0.5, self.training))
            noise = 1 + 0.1 * np.random.rand() + 0.1 * random.random()
            return {'loss': out.pow(2).mean() * noise} if mode == 'loss' else out

    torch.manual_seed(0)  # the same initial weights in every run
    dataset = [dict(inputs=torch.full((2,), float(i))) for i in range(4)]
    return Runner(
        model=Toy(), work_dir=str(work_dir), experiment_name=f'toy_{time.time_ns()}',
        train_dataloader=dict(dataset=dataset, batch_size=2, collate_fn=dict(type='default_collate'),
                              sampler=dict(type='DefaultSampler', shuffle=True)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False,
                                           **checkpoint)),
        randomness=dict(seed=0), default_scope='mmengine')


def test_max_keep_ckpts_deletes_the_old_checkpoint_only_after_the_new_one(tmp_path, monkeypatch):
    """mmengine deletes first and writes second: with max_keep_ckpts=1 a crash during the write
    left no checkpoint at all."""
    present_during_writes = []

    def spy(f, data):
        present_during_writes.append(sorted(n for n in os.listdir(tmp_path) if n.endswith('.pth')))
        f.write(data)

    monkeypatch.setattr(atomic_io, '_write_chunks', spy)
    toy_runner(tmp_path, max_iters=3, max_keep_ckpts=1).train()
    assert present_during_writes == [[], ['iter_1.pth'], ['iter_2.pth']]
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith('.pth')) == ['iter_3.pth']
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_3.pth')
    meta = load_local_checkpoint(str(tmp_path / 'iter_3.pth'))['meta']
    assert len(meta['rng_states']) == 1  # one process


def test_a_failed_checkpoint_write_stops_training_and_keeps_the_last_good_one(tmp_path,
                                                                              monkeypatch):
    writes = []

    def full_disk_at_third_write(f, data):
        writes.append(f.name)
        if len(writes) == 3:
            raise OSError(28, 'No space left on device')
        f.write(data)

    monkeypatch.setattr(atomic_io, '_write_chunks', full_disk_at_third_write)
    with pytest.raises(OSError, match=r'could not write .*iter_3\.pth \(No space left'):
        toy_runner(tmp_path, max_iters=4, max_keep_ckpts=1).train()
    assert sorted(n for n in os.listdir(tmp_path) if 'pth' in n) == ['iter_2.pth']
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_2.pth')


def test_toy_resume_continues_with_the_same_random_numbers(tmp_path):
    """Uninterrupted 4 iterations == 2 iterations, a fresh process state, resume, 2 more."""
    toy_runner(tmp_path / 'full', max_iters=4).train()
    toy_runner(tmp_path / 'split', max_iters=2).train()
    torch.manual_seed(123), np.random.seed(123), random.seed(123)  # a new process's state
    runner = toy_runner(tmp_path / 'split', max_iters=4)
    runner._resume = True  # what `--resume` sets
    runner.train()
    full = load_local_checkpoint(str(tmp_path / 'full' / 'iter_4.pth'))
    split = load_local_checkpoint(str(tmp_path / 'split' / 'iter_4.pth'))
    for key in full['state_dict']:
        assert torch.equal(full['state_dict'][key], split['state_dict'][key])
    full_rng, split_rng = full['meta']['rng_states'][0], split['meta']['rng_states'][0]
    assert torch.equal(full_rng['torch'], split_rng['torch'])
    assert torch.equal(full_rng['numpy']['key'], split_rng['numpy']['key'])
    assert full_rng['python'] == split_rng['python']


# ----------------------------------------------------------------------------- resume choice
def write_ckpt(work_dir, name, step, mtime=None):
    path = osp.join(work_dir, name)
    torch.save({'state_dict': {'w': torch.full((100,), float(step))}, 'meta': {'iter': step}}, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def point_at(work_dir, path, mtime):
    pointer = osp.join(work_dir, 'last_checkpoint')
    with open(pointer, 'w') as f:
        f.write(path)
    os.utime(pointer, (mtime, mtime))


def test_resume_uses_last_checkpoint_when_complete(tmp_path):
    work = str(tmp_path)
    now = time.time()
    write_ckpt(work, 'iter_1.pth', 1, now - 30)
    second = write_ckpt(work, 'iter_2.pth', 2, now - 20)
    point_at(work, second, now - 10)
    # A later file from an older run (written before the pointer) is not picked.
    write_ckpt(work, 'iter_9.pth', 9, now - 100)
    assert find_resumable_checkpoint(work) == second


def test_resume_skips_a_truncated_checkpoint(tmp_path, monkeypatch):
    from restv2_mm.engine import checkpoint_files
    logged = []
    monkeypatch.setattr(checkpoint_files, 'print_log', lambda msg, **kwargs: logged.append(msg))
    work = str(tmp_path)
    now = time.time()
    first = write_ckpt(work, 'iter_1.pth', 1, now - 30)
    second = write_ckpt(work, 'iter_2.pth', 2, now - 20)
    with open(second, 'rb') as f:
        data = f.read()
    with open(second, 'wb') as f:  # what mmengine's in-place write leaves after a kill
        f.write(data[:len(data) // 3])
    point_at(work, second, now - 10)
    assert find_resumable_checkpoint(work) == first
    out = '\n'.join(logged)
    assert f'Not resuming from {second}: it is truncated' in out
    assert f'Resuming from {first}, the newest complete checkpoint' in out


def test_resume_takes_a_complete_checkpoint_written_after_the_pointer(tmp_path):
    """Killed between renaming iter_3.pth into place and updating last_checkpoint."""
    work = str(tmp_path)
    now = time.time()
    second = write_ckpt(work, 'iter_2.pth', 2, now - 30)
    point_at(work, second, now - 20)
    third = write_ckpt(work, 'iter_3.pth', 3, now - 10)
    assert find_resumable_checkpoint(work) == third


def test_resume_with_an_empty_pointer_or_none(tmp_path):
    work = str(tmp_path)
    assert find_resumable_checkpoint(work) is None  # fresh start, as mmengine
    first = write_ckpt(work, 'iter_1.pth', 1)
    assert find_resumable_checkpoint(work) == first  # killed before the pointer was first written
    open(osp.join(work, 'last_checkpoint'), 'w').close()  # killed while writing the pointer
    assert find_resumable_checkpoint(work) == first


def test_resume_refuses_to_start_over_when_every_checkpoint_is_broken(tmp_path):
    work = str(tmp_path)
    (tmp_path / 'iter_1.pth').write_bytes(b'')
    (tmp_path / 'iter_2.pth').write_bytes(b'PK\x03\x04cut')
    point_at(work, str(tmp_path / 'iter_2.pth'), time.time())
    with pytest.raises(CheckpointFileError, match=r'(?s)no complete checkpoint in .*iter_2\.pth: it is '
                       r'truncated.*iter_1\.pth: it is empty'):
        find_resumable_checkpoint(work)


def test_runner_module_uses_the_safe_finder():
    import mmengine.runner.runner as runner_module
    assert runner_module.find_latest_checkpoint is find_resumable_checkpoint


# ----------------------------------------------------------------------------- distributed exit
RANK_SCRIPT = """
import atexit
import ctypes
import datetime
import os
import sys
import time

import torch
import torch.distributed as dist

import restv2_mm  # noqa: F401  (registers the release of process groups at exit, as in every run)
from restv2_mm.engine.crash_safe_training import gather_rng_states
from restv2_mm.utils import launch

rank, port, pipe = (int(sys.argv[i]) for i in (1, 2, 5))
run_id, ending = sys.argv[3:5]
store = dist.PrefixStore(run_id, dist.TCPStore('127.0.0.1', port, is_master=False))
dist.init_process_group('gloo', store=store, rank=rank, world_size=2,
                        timeout=datetime.timedelta(minutes=15))
inputs, outputs = torch.full((4,), float(rank)), [torch.empty(4) for _ in range(2)]


def thread_states():
    api = ctypes.pythonapi
    api.PyInterpreterState_Get.restype = ctypes.c_void_p
    api.PyInterpreterState_ThreadHead.restype = api.PyThreadState_Next.restype = ctypes.c_void_p
    api.PyInterpreterState_ThreadHead.argtypes = api.PyThreadState_Next.argtypes = [ctypes.c_void_p]
    count, state = 0, api.PyInterpreterState_ThreadHead(api.PyInterpreterState_Get())
    while state:
        count, state = count + 1, api.PyThreadState_Next(state)
    return count


class LetGoOfTheGilDuringShutdown:
    # Freed with the module's globals, after Py_Finalize began. While gloo still holds the
    # tensor, it keeps letting go of the GIL: a gloo worker waiting for the GIL takes it, and
    # CPython ends that thread there (the abort). Once gloo let go of the tensor, it returns.
    def __init__(self, tensor):
        self.tensor, self.held_by_python = tensor, sys.getrefcount(tensor)
        self.refcount, self.sleep, self.say = sys.getrefcount, time.sleep, sys.stderr.write

    def __del__(self):
        for _ in range(6000):
            if self.refcount(self.tensor) <= self.held_by_python:
                return
            self.sleep(0.01)
        self.say('gloo still held the tensor a minute into the shutdown\\n')


if ending == 'rng-gather':  # a checkpoint as the run's last step, then the script just ends
    assert len(gather_rng_states()) == 2
elif ending.startswith('forced') and rank == 1:
    os.read(pipe, 1)  # until rank 0 runs its exit handlers
    dist.all_gather(outputs, inputs)
elif ending.startswith('forced'):
    if ending == 'forced-unguarded':  # what torch alone does
        atexit.unregister(launch._release_process_groups_at_exit)
    sentinel = LetGoOfTheGilDuringShutdown(inputs)
    dist.all_gather(outputs, inputs, async_op=True)  # the work item is left to gloo's worker

    def let_rank_1_join_while_holding_the_gil():
        # Registered after restv2_mm's release, so it runs before it. Rank 1 completes the
        # gather; gloo's worker, dropping the work item, decrefs our tensors' Python objects
        # and makes a thread state to wait for the GIL, which this thread keeps until then: it
        # never blocks (libc's write through PyDLL keeps the GIL, unlike os.write), and a
        # 1000 s switch interval never hands the GIL over.
        sys.setswitchinterval(1000.0)
        others = thread_states()
        ctypes.PyDLL(None).write(pipe, b'x', 1)
        while thread_states() == others:
            pass

    atexit.register(let_rank_1_join_while_holding_the_gil)
elif ending == 'raises' and rank == 0:
    dist.all_gather(outputs, inputs, async_op=True)  # rank 1 never joins it
    raise RuntimeError('rank 0 stops here')
elif ending == 'raises':
    store.wait(['rank 0 exited'])
"""


@pytest.fixture(scope='module')
def rank_script(tmp_path_factory):
    path = tmp_path_factory.mktemp('ranks') / 'rank.py'
    path.write_text(RANK_SCRIPT)
    return str(path)


@pytest.fixture(scope='module')
def rendezvous():
    """A TCPStore served by this process for the ranks below, on a port the system picks and
    that stays bound while they run (a port picked, released and passed on can be taken by
    another process before a rank binds it)."""
    import torch.distributed as dist
    return dist.TCPStore('127.0.0.1', 0, is_master=True, wait_for_workers=False)


@contextlib.contextmanager
def two_ranks(script, store, run_id, ending):
    """Two rank processes (killed on leaving if still running); a pipe lets rank 0 tell rank 1
    when to go on without giving up the GIL."""
    env = dict(os.environ, PYTHONPATH=REPO)
    read_end, write_end = os.pipe()
    ranks = [subprocess.Popen([sys.executable, script, str(rank), str(store.port), run_id, ending,
                               str(fd)], env=env, pass_fds=(fd,), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for rank, fd in enumerate((write_end, read_end))]
    os.close(read_end), os.close(write_end)
    try:
        yield ranks
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
                rank.communicate()


def finish(proc, timeout=300):
    """The exit code and output of a rank; a rank still running after ``timeout`` fails the
    test as a hang (it takes seconds)."""
    try:
        output = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f'a rank hung at exit:\n{proc.communicate()[0][-3000:]}')
    return proc.returncode, output


@pytest.mark.parametrize('guarded', [True, False], ids=['released-at-exit', 'torch-alone'])
def test_gloo_worker_releasing_tensors_during_shutdown(rank_script, rendezvous, guarded):
    """The abort, forced: rank 0's last gather completes only once its exit handlers run, and
    its main thread keeps the GIL until gloo's worker, dropping the gather's work item, waits
    for the GIL to decref the tensors' Python objects. Left to torch (torch-alone), the group is
    destroyed during module teardown, after Py_Finalize began; the worker gets the GIL there and
    CPython ends it with pthread_exit inside a noexcept destructor: SIGABRT, every time. With
    restv2_mm's release at exit the worker finishes before the interpreter shuts down."""
    ending = 'forced' if guarded else 'forced-unguarded'
    with two_ranks(rank_script, rendezvous, f'{ending}-', ending) as ranks:
        (code0, out0), (code1, out1) = finish(ranks[0]), finish(ranks[1])
    assert code1 == 0, out1
    if guarded:
        assert code0 == 0, out0
    else:
        assert code0 == -6 and 'terminate called without an active exception' in out0, (
            f'rank 0 exited {code0} instead of aborting: has torch stopped taking the GIL in '
            f'a gloo thread during shutdown? Then the release at exit may be obsolete.\n{out0}')


def test_ranks_exit_cleanly_after_a_checkpoint_as_their_last_step(rank_script, rendezvous):
    """The natural ending of the forced case above: the RNG gather of the last checkpoint, then
    the script ends, as MMDetection's or MMSegmentation's own train.py does. Without the release
    at exit, 2 of about 165 such runs aborted on a loaded machine (the count of issue 18)."""
    with two_ranks(rank_script, rendezvous, 'gather-', 'rng-gather') as ranks:
        results = [finish(rank) for rank in ranks]
    assert [code for code, _ in results] == [0, 0], results


def test_a_rank_that_raised_leaves_at_once(rank_script, rendezvous):
    """Rank 0 raises with a gather in flight that rank 1 never joins. Torch alone would wait for
    the gather during teardown until the group's timeout (15 minutes here, 30 by default): the
    release at exit leaves a failing rank's groups unfreed, so it exits with its error at once.
    Rank 1 is told only after rank 0 exited; a hang fails the test."""
    import torch.distributed as dist
    with two_ranks(rank_script, rendezvous, 'raises-', 'raises') as ranks:
        code0, out0 = finish(ranks[0])
        assert code0 == 1 and 'RuntimeError: rank 0 stops here' in out0, out0
        dist.PrefixStore('raises-', rendezvous).set('rank 0 exited', '1')
        code1, out1 = finish(ranks[1])
    assert code1 == 0, out1


def threads_of_this_process():
    return len(os.listdir('/proc/self/task'))


@pytest.mark.skipif(not osp.isdir('/proc/self/task'), reason='counts threads through /proc')
def test_release_joins_gloo_threads_and_warns_about_a_group_kept_alive():
    """In this process, world size 1: the release destroys the group and its threads are gone
    when it returns (the join), unless something still holds the group, which it says."""
    import torch.distributed as dist
    from restv2_mm.utils.launch import release_process_groups
    assert not dist.is_initialized()
    for attempt in range(2):  # the first one starts whatever torch starts lazily, once
        before = threads_of_this_process()
        dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
        assert threads_of_this_process() > before  # gloo's worker and transport threads
        dist.all_reduce(torch.ones(3))
        assert release_process_groups() and not dist.is_initialized()
    assert threads_of_this_process() == before
    assert not release_process_groups()  # nothing left

    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    kept = dist.group.WORLD  # like a Runner held in a global variable
    with pytest.warns(UserWarning, match='process group is still referenced'):
        assert release_process_groups()
    assert threads_of_this_process() > before
    del kept
    assert threads_of_this_process() == before


# ----------------------------------------------------------------------------- RNG states
def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # a cached gaussian is part of numpy's state
    state = capture_rng_state()
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    path = save({'meta': {'rng_states': [state]}}, tmp_path / 'rng.pth')
    loaded = load_local_checkpoint(path)['meta']['rng_states'][0]
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    restore_rng_state(loaded)
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == expected


# ----------------------------------------------------------------------------- images
def test_image_bytes_problem():
    jpeg = jpeg_bytes()
    assert image_bytes_problem(jpeg) is None
    assert image_bytes_problem(jpeg_bytes(exif_orientation=6)) is None  # EXIF thumbnail-free APP1
    assert 'truncated JPEG' in image_bytes_problem(jpeg[:len(jpeg) // 2])
    assert 'truncated JPEG' in image_bytes_problem(jpeg[:-2])
    assert image_bytes_problem(jpeg + b'trailer data after the image') is None
    png = png_bytes()
    assert image_bytes_problem(png) is None
    assert 'truncated PNG' in image_bytes_problem(png[:len(png) - 13])
    assert image_bytes_problem(b'') == 'is empty (0 bytes)'


def load_image(path, **kwargs):
    from mmcv.transforms import LoadImageFromFile
    return LoadImageFromFile(**kwargs)(dict(img_path=str(path)))


@pytest.mark.parametrize('content,words', [
    (b'', 'is empty'), (jpeg_bytes()[:500], 'truncated JPEG'), (png_bytes()[:40], 'truncated PNG'),
    (b'hello', 'could not be decoded'),
], ids=['empty', 'truncated_jpeg', 'truncated_png', 'text'])
def test_load_image_names_the_bad_file(tmp_path, content, words):
    path = tmp_path / 'bad_image.jpg'
    path.write_bytes(content)
    with pytest.raises(CorruptImageError, match=f'image {re.escape(str(path))} .*{words}.*ignore_empty=True'):
        load_image(path)


def test_ignore_empty_skips_bad_images_with_a_warning(tmp_path, monkeypatch):
    from restv2_mm.engine import image_loading
    logged = []
    monkeypatch.setattr(image_loading, 'print_log', lambda msg, **kwargs: logged.append(msg))
    path = tmp_path / 'bad_image.jpg'
    path.write_bytes(jpeg_bytes()[:500])
    assert load_image(path, ignore_empty=True) is None
    assert load_image(tmp_path / 'missing.jpg', ignore_empty=True) is None
    out = '\n'.join(logged)
    assert f'Skipping image {path}: it is a truncated JPEG' in out
    assert 'missing.jpg: it does not exist' in out
    with pytest.raises(FileNotFoundError, match='missing.jpg does not exist'):
        load_image(tmp_path / 'missing.jpg')


def test_training_dataset_draws_another_image_when_asked_to_skip(tmp_path):
    """mmengine's BaseDataset refetches when the pipeline returns None (ignore_empty=True)."""
    from mmseg.datasets import ADE20KDataset
    for split in ('img', 'ann'):
        (tmp_path / split).mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 1, np.uint8)).save(tmp_path / 'ann' / f'{i}.png')
    (tmp_path / 'img' / '0.jpg').write_bytes(jpeg_bytes()[:400])
    (tmp_path / 'img' / '1.jpg').write_bytes(jpeg_bytes())
    pipeline = [dict(type='LoadImageFromFile', ignore_empty=True),
                dict(type='mmseg.LoadAnnotations')]
    dataset = ADE20KDataset(data_root=str(tmp_path), data_prefix=dict(img_path='img', seg_map_path='ann'),
                            pipeline=pipeline)
    assert dataset[0]['img_path'].endswith('1.jpg')
    dataset_strict = ADE20KDataset(data_root=str(tmp_path),
                                   data_prefix=dict(img_path='img', seg_map_path='ann'),
                                   pipeline=[dict(type='LoadImageFromFile')])
    with pytest.raises(CorruptImageError, match=r'0\.jpg is a truncated JPEG'):
        dataset_strict[0]


def test_label_map_errors_name_the_file(tmp_path):
    from mmseg.datasets.transforms import LoadAnnotations
    path = tmp_path / 'label.png'
    path.write_bytes(png_bytes(np.zeros((8, 8), np.uint8))[:30])
    results = dict(seg_map_path=str(path), reduce_zero_label=False, seg_fields=[])
    with pytest.raises(CorruptImageError, match=f'label map {path} is a truncated PNG'):
        LoadAnnotations()(results)


@pytest.mark.parametrize('shape', [(3, 4), (1, 1), (1, 5), (6, 1)])
def test_label_maps_keep_their_shape_and_classes(tmp_path, shape):
    """reduce_zero_label as mmseg applies it (0 -> 255 ignore, k -> k - 1, 255 stays ignore), and
    a map one pixel high or wide stays (H, W) (mmseg 1.2.2 squeezed a 1x1 map to a scalar)."""
    from mmseg.datasets.transforms import LoadAnnotations
    labels = np.resize(np.array([0, 1, 5, 255, 150], np.uint8), shape)
    Image.fromarray(labels).save(tmp_path / 'label.png')
    for reduce_zero_label, expected in ((False, labels),
                                        (True, np.resize(np.array([255, 0, 4, 255, 149]), shape))):
        results = dict(seg_map_path=str(tmp_path / 'label.png'),
                       reduce_zero_label=reduce_zero_label, seg_fields=[])
        out = LoadAnnotations(reduce_zero_label=reduce_zero_label)(results)
        assert out['gt_seg_map'].dtype == np.uint8 and out['gt_seg_map'].shape == shape
        np.testing.assert_array_equal(out['gt_seg_map'], expected)
    results = dict(seg_map_path=str(tmp_path / 'label.png'), reduce_zero_label=False,
                   seg_fields=[], label_map={0: 7})  # a dataset with its own classes remaps
    assert LoadAnnotations()(results)['gt_seg_map'].flat[0] == 7


def test_odd_images_decode_to_three_channel_uint8(tmp_path):
    """Grayscale, RGBA, 16-bit, 1x1 and EXIF-rotated files all become (H, W, 3) uint8 BGR."""
    cases = {
        'gray.png': (np.full((5, 7), 200, np.uint8), (5, 7)),
        'rgba.png': (np.full((5, 7, 4), 100, np.uint8), (5, 7)),
        'sixteen.png': (np.full((5, 7), 40000, np.uint16), (5, 7)),
        'one.png': (np.zeros((1, 1, 3), np.uint8), (1, 1)),
    }
    for name, (array, shape) in cases.items():
        Image.fromarray(array).save(tmp_path / name)
        img = load_image(tmp_path / name)['img']
        assert img.shape == (*shape, 3) and img.dtype == np.uint8, name
    assert load_image(tmp_path / 'sixteen.png')['img'].max() == 40000 >> 8
    # EXIF orientation 6 (rotate 90 degrees clockwise to view): a stored 64x48 (W x H) image is
    # seen as 48x64, as image viewers and mmcv.imread (used to draw results) show it.
    (tmp_path / 'exif.jpg').write_bytes(jpeg_bytes((64, 48), exif_orientation=6))
    import mmcv
    assert load_image(tmp_path / 'exif.jpg')['img'].shape == (64, 48, 3)
    assert mmcv.imread(str(tmp_path / 'exif.jpg')).shape == (64, 48, 3)
    assert load_image(tmp_path / 'exif.jpg', color_type='unchanged')['img'].shape == (48, 64, 3)
