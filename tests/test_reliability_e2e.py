"""Reliability end to end, with real processes and real signals.

* ``kill -9`` of tools/train.py in the middle of writing a checkpoint, and again in the middle of
  an iteration, then ``--resume``: training continues from the last complete checkpoint and ends
  with exactly the weights, optimizer, scheduler and RNG states of an uninterrupted run.
* The same through tools/dist_train.sh with 2 gloo processes, with ``frozen_stages=1`` and
  ``with_cp=True`` (DDP must neither fail on unused parameters nor hang).
* Odd images (grayscale, RGBA, 16-bit, 16x16, 1x1, 64x2000, EXIF-rotated) through tools/test.py
  and tools/demo.py, for the segmentor and the detector.

The model is ResTv2 with a tiny custom arch (16-128 channels, one block per stage) on tiny
images, so each training process costs seconds. The write of a named checkpoint stalls after its
first chunk (a ``sitecustomize`` that wraps :func:`restv2_mm.engine.atomic_io._write_chunks`),
so a kill lands inside it, or before it, whatever the machine's load: the run cannot get past it.
"""
import glob
import importlib.util
import json
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from restv2_mm.datasets.tiny_ade20k import make_tiny_ade20k
from restv2_mm.engine import checkpoint_problem, load_local_checkpoint
from subprocess_tools import launcher_env, run

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG_CONFIG = osp.join(REPO, 'configs', 'upernet_restv2_t_tiny_ade20k.py')
DET_CONFIG = osp.join(REPO, 'configs', 'mask_rcnn_restv2_t.py')
TINY_ARCH = "dict(_delete_=True, embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 4])"

STALLING_DISK = '''
import os
if os.environ.get('RESTV2_TEST_STALL_WRITE'):
    import threading
    import restv2_mm.engine.atomic_io as atomic_io
    atomic_io.CHUNK_BYTES = 256 << 10
    _write = atomic_io._write_chunks

    def _stalling_write_chunks(f, data):  # a disk that hangs on one checkpoint
        name = os.path.basename(f.name).split(atomic_io.TMP_MARKER)[0]
        if name == os.environ['RESTV2_TEST_STALL_WRITE']:
            f.write(data[:atomic_io.CHUNK_BYTES])
            f.flush()
            threading.Event().wait()  # until the test kills the process
        _write(f, data)

    atomic_io._write_chunks = _stalling_write_chunks
'''


def seg_config(tmp_path, data_root, max_iters, **backbone):
    """configs/upernet_restv2_t_tiny_ade20k.py with a tiny arch, 64x64 crops and a checkpoint
    every iteration."""
    extra = ''.join(f', {k}={v!r}' for k, v in backbone.items())
    path = tmp_path / f'tiny_seg_{max_iters}.py'
    path.write_text(f'''
_base_ = [{SEG_CONFIG!r}]
data_root = {data_root!r}
tiny_dataset = None  # the data is written by the test
crop_size = (64, 64)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch={TINY_ARCH}, drop_path_rate=0.1{extra}),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=16),
    auxiliary_head=dict(in_channels=64, channels=16))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(96, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 64), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))
test_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
randomness = dict(seed=0)
train_cfg = dict(max_iters={max_iters}, val_interval={max_iters})
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=2),
    dict(type='PolyLR', eta_min=0., power=1., by_epoch=False, begin=2, end={max_iters}),
]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
''')
    return str(path)


@pytest.fixture(scope='module')
def seg_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('tiny_ade'))
    make_tiny_ade20k(root, num_train=4, num_val=2, height_range=(48, 64), width_range=(48, 80))
    return root


@pytest.fixture(scope='module')
def stalling_disk_env(tmp_path_factory):
    """``stalling_disk_env(name)``: an environment whose Python processes (torchrun's workers
    too) never finish writing the checkpoint ``name``."""
    site = tmp_path_factory.mktemp('site')
    (site / 'sitecustomize.py').write_text(STALLING_DISK)
    pythonpath = f'{site}{os.pathsep}{os.environ.get("PYTHONPATH", "")}'
    return lambda name: dict(os.environ, PYTHONPATH=pythonpath, RESTV2_TEST_STALL_WRITE=name)


def start(command, env, log):
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def descendants(pid):
    """Process ids below ``pid`` (torchrun starts its workers in sessions of their own, so a
    process-group kill would miss them)."""
    children = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    parent = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_9(proc):
    """SIGKILL the started process and everything it started, like a scheduler killing a job."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def kill_when(proc, condition, timeout=900):
    """kill -9 the run the moment ``condition()`` holds; fail if the run ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            kill_9(proc)
            return
        assert proc.poll() is None, 'the run ended before the moment to kill it'
        time.sleep(0.02)
    kill_9(proc)
    raise AssertionError('timed out waiting for the moment to kill')


def temporaries(work_dir, name):
    return glob.glob(osp.join(work_dir, f'{name}.tmp-*'))


def pointer(work_dir):
    try:
        with open(osp.join(work_dir, 'last_checkpoint')) as f:
            return f.read().strip()
    except OSError:
        return None


def assert_same_training_state(a_path, b_path, world_size=1):
    """Weights, optimizer, schedulers, iteration and every rank's RNG states are equal."""
    a, b = load_local_checkpoint(a_path), load_local_checkpoint(b_path)
    assert a['meta']['iter'] == b['meta']['iter']
    for key in a['state_dict']:
        diff = (a['state_dict'][key].double() - b['state_dict'][key].double()).abs().max()
        assert torch.equal(a['state_dict'][key], b['state_dict'][key]), f'{key}: max |diff| {diff}'
    for p, q in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        for name in p:
            assert torch.equal(torch.as_tensor(p[name]), torch.as_tensor(q[name])), name
    assert a['param_schedulers'] == b['param_schedulers']
    rng_a, rng_b = a['meta']['rng_states'], b['meta']['rng_states']
    assert len(rng_a) == len(rng_b) == world_size
    for s, t in zip(rng_a, rng_b):
        assert s['python'] == t['python'] and s['numpy']['pos'] == t['numpy']['pos']
        assert torch.equal(s['numpy']['key'], t['numpy']['key'])
        assert torch.equal(s['torch'], t['torch'])


def test_kill_9_anywhere_then_resume_equals_an_uninterrupted_run(seg_data, stalling_disk_env,
                                                                 tmp_path):
    config = seg_config(tmp_path, seg_data, max_iters=4)
    train = [sys.executable, 'tools/train.py', config]
    reference, work = str(tmp_path / 'reference'), str(tmp_path / 'work')
    run(train + ['--work-dir', reference])

    # 1. Killed while iter_2.pth is being written: iter_1.pth stays the last complete one.
    with open(tmp_path / 'run1.log', 'w') as log:
        proc = start(train + ['--work-dir', work], stalling_disk_env('iter_2.pth'), log)
        kill_when(proc, lambda: temporaries(work, 'iter_2.pth'))
    partial, = temporaries(work, 'iter_2.pth')
    assert checkpoint_problem(partial) is not None  # really cut short
    assert not osp.exists(osp.join(work, 'iter_2.pth'))
    assert pointer(work) == osp.join(work, 'iter_1.pth')

    # 2. Resumed, then killed in iteration 4 (iter_3.pth complete, iter_4.pth never written).
    with open(tmp_path / 'run2.log', 'w') as log:
        proc = start(train + ['--work-dir', work, '--resume'], stalling_disk_env('iter_4.pth'),
                     log)
        kill_when(proc, lambda: pointer(work) == osp.join(work, 'iter_3.pth'))
    out = (tmp_path / 'run2.log').read_text()
    assert f'Removed {partial}' in out
    assert 'resumed epoch: 0, iter: 1' in out and 'Restored the RNG states' in out

    # 3. Resumed to the end.
    out = run(train + ['--work-dir', work, '--resume'])
    assert 'resumed epoch: 0, iter: 3' in out
    assert re.findall(r'Iter\(train\) \[(\d)/4\]', out) == ['4']
    for step in (1, 3, 4):  # every checkpoint equals the uninterrupted run's
        assert_same_training_state(osp.join(reference, f'iter_{step}.pth'),
                                   osp.join(work, f'iter_{step}.pth'))


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (gloo) path')
def test_dist_train_kill_9_and_resume_with_frozen_stages_and_with_cp(seg_data, stalling_disk_env,
                                                                     tmp_path):
    """tools/dist_train.sh, 2 processes, frozen stem and stage 1, checkpointed blocks."""
    config = seg_config(tmp_path, seg_data, max_iters=3, frozen_stages=1, with_cp=True)
    work = str(tmp_path / 'work')
    command = ['bash', 'tools/dist_train.sh', config, '2', '--work-dir', work]
    env = launcher_env(stalling_disk_env('iter_2.pth'))
    with open(tmp_path / 'run1.log', 'w') as log:
        proc = start(command, env, log)
        kill_when(proc, lambda: temporaries(work, 'iter_2.pth'))
    out = (tmp_path / 'run1.log').read_text()
    assert 'rank 0 of 2 CPU processes' in out and 'Iter(train) [1/3]' in out
    assert pointer(work) == osp.join(work, 'iter_1.pth')

    out = run(command + ['--resume'], env=launcher_env())
    assert 'resumed epoch: 0, iter: 1' in out and 'Restored the RNG states' in out
    assert re.findall(r'Iter\(train\) \[(\d)/3\]', out) == ['2', '3']
    final = load_local_checkpoint(osp.join(work, 'iter_3.pth'))
    assert len(final['meta']['rng_states']) == 2  # one per rank
    # The frozen parts did not move; the rest trained.
    first = load_local_checkpoint(osp.join(work, 'iter_1.pth'))['state_dict']
    frozen = [k for k in first if k.startswith(('backbone.stem.', 'backbone.stages.0.'))]
    assert frozen and all(torch.equal(first[k], final['state_dict'][k]) for k in frozen)
    assert not torch.equal(first['backbone.stages.1.blocks.0.mlp.fc1.weight'],
                           final['state_dict']['backbone.stages.1.blocks.0.mlp.fc1.weight'])


# ----------------------------------------------------------------------------- odd images
def odd_images():
    """name -> (array as stored, PIL save kwargs, (H, W) as viewed)."""
    rng = np.random.default_rng(0)
    colour = lambda h, w: rng.integers(0, 255, (h, w, 3), dtype=np.uint8)  # noqa: E731
    return {
        'gray.png': (rng.integers(0, 255, (40, 56), dtype=np.uint8), {}, (40, 56)),
        'rgba.png': (rng.integers(0, 255, (40, 56, 4), dtype=np.uint8), {}, (40, 56)),
        'sixteen_bit.png': (rng.integers(0, 65535, (40, 56), dtype=np.uint16), {}, (40, 56)),
        'small.png': (colour(16, 16), {}, (16, 16)),
        'one_pixel.png': (colour(1, 1), {}, (1, 1)),
        'wide.png': (colour(64, 2000), {}, (64, 2000)),
        'exif_rotated.jpg': (colour(40, 56), {'exif_orientation': 6}, (56, 40)),
    }


def write_odd_images(directory):
    os.makedirs(directory, exist_ok=True)
    shapes = {}
    for name, (array, kwargs, viewed) in odd_images().items():
        image = Image.fromarray(array)
        if 'exif_orientation' in kwargs:
            exif = image.getexif()
            exif[0x0112] = kwargs['exif_orientation']
            image.save(osp.join(directory, name), exif=exif, quality=95)
        else:
            image.save(osp.join(directory, name))
        shapes[name] = viewed
    return shapes


def load_demo():
    spec = importlib.util.spec_from_file_location('restv2_demo', osp.join(REPO, 'tools', 'demo.py'))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def untrained_checkpoint(config, scope, path):
    """An initialised (not trained) model saved the way mmengine saves one."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(config)
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return str(path)


def test_odd_images_through_segmentor_test_and_demo(tmp_path):
    root = tmp_path / 'ade'
    shapes = write_odd_images(str(root / 'images' / 'validation'))
    os.makedirs(root / 'annotations' / 'validation')
    for name, (height, width) in shapes.items():
        label = (np.arange(height * width).reshape(height, width) % 3 + 1).astype(np.uint8)
        Image.fromarray(label).save(root / 'annotations' / 'validation' / (osp.splitext(name)[0] + '.png'))
    config = seg_config(tmp_path, str(root), max_iters=1)
    checkpoint = untrained_checkpoint(config, 'mmseg', tmp_path / 'seg.pth')

    # ADE20KDataset lists one image suffix: the PNGs through tools/test.py (the EXIF JPEG goes
    # through tools/test.py in the detection test), every image through the demo below.
    # mmseg's IoUMetric squeezes the predicted map when it writes --out, which fails for a 1x1
    # prediction: the 1x1 image and label map are tested in their own set, without --out.
    one_pixel = tmp_path / 'one_pixel'
    for split in ('images', 'annotations'):
        os.makedirs(one_pixel / split / 'validation')
        os.rename(root / split / 'validation' / 'one_pixel.png',
                  one_pixel / split / 'validation' / 'one_pixel.png')
    pngs = {name: shape for name, shape in shapes.items()
            if name.endswith('.png') and name != 'one_pixel.png'}
    out_dir = tmp_path / 'pred'
    out = run([sys.executable, 'tools/test.py', config, checkpoint, '--work-dir',
               str(tmp_path / 'w'), '--out', str(out_dir),
               '--cfg-options', 'test_dataloader.dataset.img_suffix=.png'])
    assert re.search(rf'\(test\) \[{len(pngs)}/{len(pngs)}\].*mIoU: [\d.]+', out), out[-3000:]
    for name, viewed in pngs.items():  # label maps at each image's size
        pred = np.array(Image.open(out_dir / (osp.splitext(name)[0] + '.png')))
        assert pred.shape == viewed, name
    out = run([sys.executable, 'tools/test.py', config, checkpoint, '--work-dir',
               str(tmp_path / 'w1'), '--cfg-options', 'test_dataloader.dataset.img_suffix=.png',
               f'test_dataloader.dataset.data_root={one_pixel}'])
    assert re.search(r'\(test\) \[1/1\].*mIoU: [\d.]+', out), out[-3000:]

    demo = load_demo()
    for name, viewed in shapes.items():
        folder = one_pixel if name == 'one_pixel.png' else root
        vis = demo.run(str(folder / 'images' / 'validation' / name), config, checkpoint)
        assert vis.shape == (*viewed, 3) and vis.dtype == np.uint8, name


def det_config(tmp_path, data_root):
    path = tmp_path / 'tiny_det.py'
    path.write_text(f'''
_base_ = [{DET_CONFIG!r}]
data_root = {data_root!r}
model = dict(
    backbone=dict(arch={TINY_ARCH}, init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128]),
    test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=50),
                  rcnn=dict(score_thr=0.0, max_per_img=10)))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
test_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(
    data_root=data_root, ann_file='odd.json', data_prefix=dict(img='images/'),
    pipeline=test_pipeline))
test_evaluator = dict(ann_file=data_root + 'odd.json')
tiny_dataset = None
''')
    return str(path)


def test_odd_images_through_detector_test_and_demo(tmp_path):
    root = tmp_path / 'coco'
    shapes = write_odd_images(str(root / 'images'))
    images, annotations = [], []
    for i, (name, (height, width)) in enumerate(shapes.items(), start=1):
        images.append(dict(id=i, file_name=name, height=height, width=width))
        box = [0, 0, max(width / 2, 1), max(height / 2, 1)]
        x, y, w, h = box
        annotations.append(dict(id=i, image_id=i, category_id=1, bbox=box, area=w * h, iscrowd=0,
                                segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]]))
    with open(root / 'odd.json', 'w') as f:
        # All 80 COCO categories: the untrained detector predicts any of them.
        from mmdet.datasets import CocoDataset
        categories = [dict(id=i, name=n) for i, n in enumerate(CocoDataset.METAINFO['classes'], 1)]
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    config = det_config(tmp_path, str(root) + '/')
    checkpoint = untrained_checkpoint(config, 'mmdet', tmp_path / 'det.pth')

    out = run([sys.executable, 'tools/test.py', config, checkpoint, '--work-dir',
               str(tmp_path / 'w'), '--out', str(tmp_path / 'preds.pkl')])
    assert re.search(r'coco/bbox_mAP: [-\d.]+', out) and 'coco/segm_mAP' in out, out[-3000:]
    import pickle
    with open(tmp_path / 'preds.pkl', 'rb') as f:
        predictions = pickle.load(f)
    by_name = {osp.basename(p['img_path']): p for p in predictions}
    for name, viewed in shapes.items():  # masks at each image's (viewed) size
        assert tuple(by_name[name]['ori_shape']) == viewed, name
        for mask in by_name[name]['pred_instances']['masks']:  # RLE-encoded by DumpDetResults
            assert tuple(mask['size']) == viewed, name

    demo = load_demo()
    for name, viewed in shapes.items():
        vis = demo.run(str(root / 'images' / name), config, checkpoint, score_thr=0.0)
        assert vis.shape == (*viewed, 3) and vis.dtype == np.uint8, name
