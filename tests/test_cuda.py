"""On one CUDA GPU: the backbone, AMP training, activation checkpointing, mmcv's detection ops
and NCCL data-parallel training. Marked ``cuda`` and skipped without a CUDA device
(``python -m pytest -m cuda`` selects them; tools/gpu_check.sh runs them on a GPU machine).

- ResTv2 on CUDA (the plain path: SDPA, whole-tensor MLP, autograd) computes what the CPU's
  fast paths compute: outputs and gradients, fp32, every style, odd sizes;
- fp16 / bf16 autocast inference stays close to fp32;
- a Mask R-CNN-T and an UperNet-T ``train_step`` with ``AmpOptimWrapper`` (dynamic loss scale)
  run in fp16 with finite losses and move the weights;
- ``with_cp`` gives the gradients of the plain blocks;
- NMS and RoIAlign on CUDA (mmcv's kernels, or torchvision's when mmcv has CPU ops only) equal
  mmcv's CPU kernels;
- ``tools/dist_train.sh CONFIG 1`` trains the tiny detector and segmentor over NCCL, AMP and
  SyncBN kept.
No timing here: speed is tools/benchmark.py's job (tools/gpu_check.sh runs it on CUDA).
"""
import os.path as osp
import re

import pytest
import torch

import restv2_mm  # noqa: F401
from restv2_mm.models.restv2 import ResTv2
from restv2_mm.utils.flops import load_config
from subprocess_tools import launcher_env, run
from test_amp import build as build_model
from test_cpu_fast_paths import backbone, count_fast_path_calls

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')]

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
STYLES = ('global', 'win', 'cwin', 'hwin')


@pytest.fixture
def exact_fp32():
    """fp32 matmuls and convolutions in fp32 on the GPU (no TF32: its 10-bit mantissa would
    hide a real difference to the CPU), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def relative_error(a, b):
    return ((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm()).item()


def loss_of(outs):
    return sum(o.float().square().mean() for o in outs)


@pytest.mark.parametrize('style', STYLES)
def test_backbone_on_cuda_equals_cpu(monkeypatch, exact_fp32, style):
    """CPU: token groups, fused MLP, query splits. CUDA: none of them. Same numbers."""
    # Small windows: padded windows in every stage at this size. Eval mode keeps the stem's BN
    # statistics fixed; which paths run depends on autograd alone (drop path is 0).
    model = backbone(style)
    x = torch.randn(1, 3, 97, 131)
    cpu_outs = model(x)
    cpu_grads = torch.autograd.grad(loss_of(cpu_outs), list(model.parameters()))
    with torch.no_grad():
        cpu_infer = model(x)

    gpu = model.cuda()
    calls = count_fast_path_calls(monkeypatch)
    gpu_outs = gpu(x.cuda())
    gpu_grads = torch.autograd.grad(loss_of(gpu_outs), list(gpu.parameters()))
    with torch.no_grad():
        gpu_infer = gpu(x.cuda())
    assert not any(calls.values()), calls  # the plain path ran on CUDA

    for a, b in zip(gpu_outs + gpu_infer, cpu_outs + cpu_infer):
        torch.testing.assert_close(a.cpu(), b.detach(), rtol=1e-4, atol=1e-4)
    for (name, _), a, b in zip(model.named_parameters(), gpu_grads, cpu_grads):
        # Reductions sum in another order on each device: compare against the largest entry.
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-4 * b.abs().max().item(),
                                   msg=lambda m, name=name: f'{name}: {m}')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
@pytest.mark.parametrize('style', ['global', 'win'])
def test_autocast_inference_close_to_fp32(dtype, style):
    model = backbone(style).cuda()
    x = torch.randn(1, 3, 193, 257, device='cuda')
    dtypes = []  # of a linear layer's output (the outputs pass a LayerNorm: fp32 in autocast)
    model.stages[0].blocks[0].attn.proj.register_forward_hook(
        lambda module, args, out: dtypes.append(out.dtype))
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cuda', dtype=dtype):
            low = model(x)
    assert dtypes == [torch.float32, dtype]
    for a, b in zip(low, ref):
        assert torch.isfinite(a).all() and relative_error(a, b) < 2e-2


@pytest.mark.parametrize('style', ['global', 'hwin'])
def test_with_cp_gives_the_same_gradients(exact_fp32, style):
    torch.manual_seed(0)
    plain = ResTv2('tiny', attn_style=style, window_size=(8, 4, 4, 2))
    plain.init_weights()
    ckpt = ResTv2('tiny', attn_style=style, window_size=(8, 4, 4, 2), with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 131, 97, device='cuda')
    grads = []
    for model in (plain.cuda().train(), ckpt.cuda().train()):
        outs = model(x)
        grads.append(torch.autograd.grad(loss_of(outs), list(model.parameters())))
    # Equal up to the order of floating-point sums (cuDNN may pick non-deterministic kernels);
    # a checkpointing mistake would be off by far more.
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_nms_and_roi_align_on_cuda_equal_mmcv_cpu_kernels():
    from mmcv.ops import batched_nms, roi_align
    from restv2_mm.utils.mmcv_cuda import route_cuda_ops_to_torchvision
    route_cuda_ops_to_torchvision()  # no-op when mmcv has its own CUDA kernels
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + 5 + torch.rand(500, 2, generator=g) * 80], 1)
    scores, labels = torch.rand(500, generator=g), torch.randint(0, 5, (500, ), generator=g)
    nms_cfg = dict(type='nms', iou_threshold=0.5)
    ref_dets, ref_keep = batched_nms(boxes, scores, labels, nms_cfg)
    dets, keep = batched_nms(boxes.cuda(), scores.cuda(), labels.cuda(), nms_cfg)
    assert keep.is_cuda and torch.equal(keep.cpu(), ref_keep)
    torch.testing.assert_close(dets.cpu(), ref_dets)

    feats = torch.randn(2, 16, 40, 48, generator=g)  # stride 8: a 320x384 image
    rois = torch.cat([torch.randint(0, 2, (30, 1), generator=g).float(), boxes[:30]], 1)
    grad = torch.randn(30, 16, 7, 7, generator=g)
    results = []
    for device in ('cpu', 'cuda'):
        f = feats.to(device).requires_grad_()
        out = roi_align(f, rois.to(device), (7, 7), 0.125, 0, 'avg', True)
        out.backward(grad.to(device))
        results.append((out.detach().cpu(), f.grad.cpu()))
    (ref_out, ref_grad), (out, grad_in) = results
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_in, ref_grad, rtol=1e-5, atol=1e-5)


def build_for_training(config, scope):
    """The config's model (random weights, as tests/test_amp.py builds it) on the GPU, and its
    optimizer wrapper, made an ``AmpOptimWrapper`` where the config has a plain one."""
    from mmengine.optim import build_optim_wrapper
    model = build_model(config, scope).cuda().train()
    optim_wrapper = load_config(osp.join(REPO, 'configs', config)).optim_wrapper
    if optim_wrapper.get('type', 'OptimWrapper') == 'OptimWrapper':
        optim_wrapper.type = 'AmpOptimWrapper'  # what tools/train.py --amp does
        optim_wrapper.loss_scale = 'dynamic'
    return model, build_optim_wrapper(model, optim_wrapper)


def random_batch(scope, h, w, batch=2):
    """What a data loader hands ``train_step``: uint8 images and samples with random ground
    truth (boxes and masks, or label maps), as the benchmark's training mode makes them."""
    from restv2_mm.benchmark import Settings
    from restv2_mm.benchmark.candidates import data_samples
    g = torch.Generator().manual_seed(0)
    samples = data_samples(Settings(shape=[h, w], batch=batch), scope, with_gt=True)
    return dict(inputs=[torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
                        for _ in range(batch)], data_samples=samples)


@pytest.mark.parametrize('config, scope, size', [
    ('mask_rcnn_restv2_t.py', 'mmdet', (320, 416)),
    ('upernet_restv2_t.py', 'mmseg', (512, 512)),  # the config's crop size
], ids=['mask_rcnn', 'upernet'])
def test_train_step_with_amp_optim_wrapper(config, scope, size):
    from mmengine.optim import AmpOptimWrapper
    from restv2_mm.utils.mmcv_cuda import route_cuda_ops_to_torchvision
    route_cuda_ops_to_torchvision()
    model, optim_wrapper = build_for_training(config, scope)
    assert isinstance(optim_wrapper, AmpOptimWrapper)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    dtypes = []  # of a linear layer's output in the backbone (its outputs pass a LayerNorm,
    # which autocast keeps in fp32)
    hook = model.backbone.stages[0].blocks[0].attn.proj.register_forward_hook(
        lambda module, args, out: dtypes.append(out.dtype))
    losses = []
    for _ in range(5):  # the dynamic loss scale may skip the first steps (fp16 overflow)
        log_vars = model.train_step(random_batch(scope, *size), optim_wrapper)
        losses.append(float(log_vars['loss']))
    hook.remove()
    assert dtypes == [torch.float16] * 5  # the backbone ran under fp16 autocast
    assert all(torch.isfinite(torch.tensor(losses))), losses
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before)), 'no step was taken'
    scale = optim_wrapper.loss_scaler.get_scale()
    assert 0 < scale < float('inf')


def seg_tiny_options(data_root):
    return [f'tiny_dataset.data_root={data_root}', 'tiny_dataset.num_train=4',
            'tiny_dataset.num_val=2', f'train_dataloader.dataset.data_root={data_root}',
            f'test_dataloader.dataset.data_root={data_root}', 'train_cfg.max_iters=4',
            'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=4']


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['detection', 'segmentation'])
def test_dist_train_one_gpu_over_nccl(tmp_path, kind):
    from test_detection_e2e import tiny_options, train_log_lines
    data_root, work_dir = str(tmp_path / 'data') + '/', str(tmp_path / 'work')
    if kind == 'detection':
        config = osp.join(REPO, 'configs', 'mask_rcnn_restv2_t_tiny_coco.py')
        options = tiny_options(data_root, max_epochs=1)
    else:
        config = osp.join(REPO, 'configs', 'upernet_restv2_t_tiny_ade20k.py')
        options = seg_tiny_options(data_root)
    env = launcher_env()
    out = run(['bash', 'tools/dist_train.sh', config, '1', '--work-dir', work_dir,
               '--cfg-options', *options], env=env)
    assert 'Distributed training: True' in out
    # The process group mmengine set up (env_cfg.dist_cfg), not restv2_mm.utils.launch's gloo
    # fallback for CPU machines.
    assert re.search(r"backend\W{1,4}nccl", out) and 'No CUDA device' not in out
    if kind == 'detection':
        assert 'training in fp32' not in out  # the config's AmpOptimWrapper stays on a GPU
        assert [(e, i) for e, i, _ in train_log_lines(out)] == [(1, 1), (1, 2)]
        assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))
    else:
        assert 'will be automatically reverted' not in out  # SyncBN stays SyncBN over NCCL
        losses = re.findall(r'Iter\(train\) \[\s*\d+/4\].*?\sloss: ([0-9.]+)', out)
        assert len(losses) == 4, out[-3000:]
        assert osp.isfile(osp.join(work_dir, 'iter_4.pth'))
