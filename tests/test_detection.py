"""Mask R-CNN configs (paper Tables 3 and 4), the FLOPs counter and the train-time guards.

Everything here builds real mmdet models from the real configs. The FLOPs checks at the
paper's 1280x800 take minutes on 2 CPU cores and are marked slow.
"""
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config

import restv2_mm  # noqa: F401
from restv2_mm.engine import mmengine_checkpoint_globals
from restv2_mm.utils.flops import format_flops_report, get_flops, measure_model

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {name: osp.join(REPO, 'configs', f'mask_rcnn_restv2_{name}.py')
           for name in ('t', 's', 'b', 't_win', 't_cwin', 't_hwin')}
# Paper Table 4 (params, GFLOPs at 1280x800 without attention matmuls) and drop path.
TABLE4 = {'t': (49.9e6, 253e9, 0.1), 's': (60.7e6, 290e9, 0.2), 'b': (75.5e6, 328e9, 0.3)}
# Paper Table 3 params (all ResTv2-T).
TABLE3_PARAMS = {'t': 49.94e6, 't_win': 49.94e6, 't_cwin': 49.96e6, 't_hwin': 49.94e6}


def build_detector(name, test_cfg_options=None):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(CONFIGS[name])
    cfg.model.backbone.init_cfg = None
    if test_cfg_options:  # fewer proposals: the heads, not the backbone, dominate on CPU
        cfg.merge_from_dict({f'model.test_cfg.{k}': v for k, v in test_cfg_options.items()})
    return cfg, MODELS.build(cfg.model)


def run_tool(*args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize('name', list(CONFIGS))
def test_config_builds_and_runs(name):
    from mmdet.structures import DetDataSample
    cfg, model = build_detector(name, test_cfg_options={'rpn.max_per_img': 100,
                                                      'rcnn.max_per_img': 10})
    model.init_weights()
    model.eval()
    style = {'t_win': 'win', 't_cwin': 'cwin', 't_hwin': 'hwin'}.get(name, 'global')
    assert model.backbone.attn_style == style
    assert model.backbone.window_size == (64, 32, 16, 8)
    # 256x320: every stage map is larger than its window, so the window styles really window.
    height, width = 256, 320
    sample = DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                         scale_factor=(1., 1.)))
    data = model.data_preprocessor(
        dict(inputs=[torch.randint(0, 256, (3, height, width), dtype=torch.uint8)],
             data_samples=[sample]), False)
    with torch.no_grad():
        feats = model.extract_feat(data['inputs'])
        results = model.predict(data['inputs'], data['data_samples'])
    assert [f.shape[-2:] for f in feats] == [(64, 80), (32, 40), (16, 20), (8, 10), (4, 5)]
    assert all(torch.isfinite(f).all() for f in feats)
    instances = results[0].pred_instances
    assert {'bboxes', 'scores', 'labels', 'masks'} <= set(instances.keys())


@pytest.mark.parametrize('name', ['t', 's', 'b'])
def test_params_match_table4(name):
    cfg, model = build_detector(name)
    params = sum(p.numel() for p in model.parameters())
    target, _, drop_path = TABLE4[name]
    assert abs(params - target) / target < 0.005, f'{params / 1e6:.2f}M vs {target / 1e6}M'
    assert cfg.model.backbone.drop_path_rate == drop_path
    assert model.roi_head.bbox_head.num_classes == 80


@pytest.mark.parametrize('name', ['t_win', 't_cwin', 't_hwin'])
def test_params_match_table3(name):
    _, model = build_detector(name)
    params = sum(p.numel() for p in model.parameters())
    target = TABLE3_PARAMS[name]
    assert abs(params - target) / target < 0.005, f'{params / 1e6:.3f}M vs {target / 1e6}M'


# The release's Detectron2 training augmentation: shorter sides, longer side at most 1333.
RELEASE_SHORTER_SIDES = (480, 512, 534, 576, 640, 672, 704, 736, 768, 800)


@pytest.mark.parametrize('name', list(CONFIGS))
def test_recipe_is_the_released_3x_one(name):
    cfg = Config.fromfile(CONFIGS[name])
    assert cfg.default_scope == 'mmdet'
    assert 'restv2_mm' in cfg.custom_imports.imports
    optim = cfg.optim_wrapper
    assert optim.type == 'AmpOptimWrapper'
    assert optim.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert optim.clip_grad == dict(max_norm=0.01, norm_type=2)
    assert optim.paramwise_cfg == dict(norm_decay_mult=0.)  # no exemption of PA convs or biases
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.train_cfg.type == 'EpochBasedTrainLoop' and cfg.train_cfg.max_epochs == 36
    warmup, multistep = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.by_epoch, warmup.end) == \
        ('LinearLR', 0.001, False, 1000)
    # The release's steps at iterations 210k and 250k (of 270k) at 16 images per batch.
    assert multistep.type == 'MultiStepLR' and multistep.by_epoch is False
    assert multistep.milestones == [210000, 250000] and multistep.gamma == 0.1
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert [t.type for t in pipeline] == ['LoadImageFromFile', 'LoadAnnotations', 'RandomCrop',
                                          'RandomChoiceResize', 'RandomFlip', 'PackDetInputs']
    crop, resize = pipeline[2], pipeline[3]
    assert (crop.crop_type, crop.crop_size, crop.recompute_bbox) == ('relative', (0.9, 0.9), True)
    assert resize.keep_ratio
    assert resize.scales == [(1333, short) for short in RELEASE_SHORTER_SIDES]
    init_cfg = cfg.model.backbone.init_cfg
    assert init_cfg.type == 'Pretrained'
    arch = cfg.model.backbone.arch
    assert init_cfg.checkpoint == f'checkpoints/restv2_{arch}_224.pth'


@pytest.fixture(scope='module')
def built_detector_optimizer_t():
    """configs/mask_rcnn_restv2_t.py's optimizer wrapper built on its real model, as
    tools/train.py builds it without CUDA (fp32 OptimWrapper, the same param groups)."""
    from mmengine.optim import build_optim_wrapper
    from restv2_mm.utils.launch import use_fp32_without_cuda
    cfg, model = build_detector('t')
    use_fp32_without_cuda(cfg)
    return model, build_optim_wrapper(model, cfg.optim_wrapper)


def test_no_weight_decay_on_norms_and_pixel_attention(built_detector_optimizer_t):
    """Built from the config: decay on everything (PA convs and biases too) except norms."""
    model, optim_wrapper = built_detector_optimizer_t
    decay = {id(p): group['weight_decay'] for group in optim_wrapper.optimizer.param_groups
             for p in group['params']}
    assert len(decay) == len(list(model.parameters()))
    norm_types = (nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
    norm_params = {id(p) for m in model.modules() if isinstance(m, norm_types)
                   for p in m.parameters(recurse=False)}
    assert norm_params
    for name, param in model.named_parameters():
        assert decay[id(param)] == (0. if id(param) in norm_params else 0.05), name
    params = dict(model.named_parameters())
    assert decay[id(params['backbone.stem.pos.pa_conv.weight'])] == 0.05
    assert decay[id(params['backbone.stem.pos.pa_conv.bias'])] == 0.05
    assert decay[id(params['backbone.stages.1.downsample.pos.pa_conv.weight'])] == 0.05
    assert decay[id(params['backbone.stages.0.blocks.0.attn.q.bias'])] == 0.05
    assert decay[id(params['backbone.stages.0.blocks.0.norm1.weight'])] == 0
    assert decay[id(params['backbone.stem.proj.1.weight'])] == 0  # BatchNorm
    assert decay[id(params['backbone.norm3.bias'])] == 0  # output norm
    assert {group['lr'] for group in optim_wrapper.optimizer.param_groups} == {1e-4}


def test_gradients_clipped_to_0_01_over_the_whole_model(built_detector_optimizer_t):
    model, optim_wrapper = built_detector_optimizer_t
    assert optim_wrapper.clip_grad_kwargs == dict(max_norm=0.01, norm_type=2)
    params = [p for p in model.parameters() if p.requires_grad]
    for i, param in enumerate(params):
        param.grad = torch.full_like(param, 1. + i % 3)
    optim_wrapper._clip_grad()
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.double())
                                                  for p in params]))
    # One norm over all parameters (per-tensor clipping would leave sqrt(#tensors) x 0.01).
    assert abs(total.item() / 0.01 - 1) < 1e-3
    optim_wrapper.zero_grad()


def test_train_pipeline_crops_0_9_then_resizes_shorter_side(tmp_path):
    """The config's real train dataset on tiny COCO images (W x H = 320 x 256): a 288 x 230
    window with its masks and boxes, then the shorter side resized to one of the release's."""
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from restv2_mm.datasets.tiny_coco import make_tiny_coco
    register_all_modules(init_default_scope=True)
    make_tiny_coco(str(tmp_path), num_train=2, num_val=1, image_size=(320, 256), seed=0)
    dataset_cfg = Config.fromfile(CONFIGS['t']).train_dataloader.dataset
    dataset_cfg.data_root = f'{tmp_path}/'
    full_pipeline = dataset_cfg.pipeline

    dataset_cfg.pipeline = full_pipeline[:3]  # load, annotations, crop
    cropped = DATASETS.build(dataset_cfg)[0]
    assert cropped['img'].shape[:2] == (230, 288)
    masks, boxes = cropped['gt_masks'], cropped['gt_bboxes']
    assert (masks.height, masks.width) == (230, 288) and len(masks) == len(boxes) > 0
    assert torch.equal(boxes.tensor, masks.get_bboxes(type(boxes)).tensor)  # from the masks

    dataset_cfg.pipeline = full_pipeline
    dataset = DATASETS.build(dataset_cfg)
    for _ in range(8):
        sample = dataset[0]
        height, width = sample['inputs'].shape[-2:]
        assert height in RELEASE_SHORTER_SIDES and width == round(288 * height / 230)
        assert sample['data_samples'].gt_instances.masks.height == height


@pytest.mark.parametrize('name', ['t', 's'])
def test_missing_weights_stop_training_at_once(name, tmp_path):
    work_dir = tmp_path / 'work'
    # 'At once' is shown by what did not happen (no epoch, no work dir), not by a wall clock.
    result = run_tool('tools/train.py', CONFIGS[name], '--work-dir', str(work_dir))
    assert result.returncode != 0
    arch = Config.fromfile(CONFIGS[name]).model.backbone.arch
    assert 'FileNotFoundError' in result.stderr
    assert f'checkpoints/restv2_{arch}_224.pth' in result.stderr  # where to put it
    assert 'tools/convert_official.py' in result.stderr  # how to convert it
    assert 'Epoch(train)' not in result.stdout + result.stderr
    assert not work_dir.exists()  # stopped before the runner existed


class _Attention(nn.Module):

    def forward(self, x):
        q = x[..., :8]
        k = v = x[:, :, :5, 8:]
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_counted_as_matmul():
    # (B, heads, N, d) = (2, 3, 7, 8) queries over n = 5 keys: B * heads * N * n * (d + d).
    result = measure_model(_Attention(), torch.rand(2, 3, 7, 16))
    assert result['matmul'] == 2 * 3 * 7 * 5 * (8 + 8)
    assert result['total'] == result['matmul'] and result['total_without_matmul'] == 0


def test_get_flops_tool_output():
    config = CONFIGS['t']
    result = run_tool('tools/get_flops.py', config, '--shape', '128', '160', '--json')
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report['shape'] == [128, 160] and report['scope'] == 'mmdet'
    categories = ('conv', 'linear', 'matmul', 'other')
    assert report['total'] == sum(report[c] for c in categories)
    assert report['total_without_matmul'] == report['total'] - report['matmul']
    assert all(report[c] > 0 for c in categories)  # EMSAv2's sdpa is counted
    assert abs(report['params'] - 49.94e6) < 0.01e6

    # The text report prints the same numbers (formatted in-process: one more tool start-up
    # would only repeat the trace).
    report['shape'] = tuple(report['shape'])
    text = format_flops_report(report)
    assert 'Params: 49.94M' in text
    assert f'FLOPs (all ops): {report["total"] / 1e9:.2f}G' in text
    assert f'FLOPs without attention matmuls: {report["total_without_matmul"] / 1e9:.2f}G' in text
    assert 'conv / linear / matmul / other' in text


def _allowed_global_names():
    names = set()
    for entry in mmengine_checkpoint_globals():
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f'{entry.__module__}.{entry.__qualname__}')
    return names


def assert_only_allowed_globals(checkpoint):
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(checkpoint)))
    allowed = _allowed_global_names()
    assert unsafe <= allowed, f'not allow-listed: {sorted(unsafe - allowed)}'


def test_runner_checkpoint_has_only_allowed_globals(tmp_path):
    """A checkpoint of mmengine's Runner (AdamW, LinearLR + MultiStepLR, message hub)."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class ToyModel(BaseModel):

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)
            self.norm = nn.LayerNorm(1)

        def forward(self, inputs, labels, mode='loss'):
            loss = ((self.norm(self.linear(inputs)) - labels)**2).mean()
            return dict(loss=loss)

    dataset = [dict(inputs=torch.rand(2), labels=torch.rand(1)) for _ in range(4)]
    runner = Runner(
        model=ToyModel(), work_dir=str(tmp_path),
        train_dataloader=dict(dataset=dataset, batch_size=2,
                              sampler=dict(type='DefaultSampler', shuffle=True),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.01, by_epoch=False, end=2),
                         dict(type='MultiStepLR', milestones=[1], by_epoch=True)],
        train_cfg=dict(by_epoch=True, max_epochs=1),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        default_scope='mmengine')
    runner.train()
    checkpoint = tmp_path / 'epoch_1.pth'
    assert_only_allowed_globals(checkpoint)
    loaded = restv2_mm.engine.load_local_checkpoint(str(checkpoint))
    assert loaded['meta']['epoch'] == 1 and 'message_hub' in loaded


@pytest.mark.slow
@pytest.mark.parametrize('name', ['t', 's', 'b'])
def test_flops_match_table4(name):
    result = get_flops(CONFIGS[name], shape=(800, 1280))
    target = TABLE4[name][1]
    assert abs(result['total_without_matmul'] - target) / target < 0.02, result
    assert result['matmul'] > 0


@pytest.mark.slow
def test_flops_counter_calibrated_on_mmdet_swin_t():
    """The facts file's calibration: 267.0G with attention matmuls, 263.9G without."""
    result = get_flops('mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', shape=(800, 1280))
    assert abs(result['total'] / 1e9 - 267.0) < 0.15, result
    assert abs(result['total_without_matmul'] / 1e9 - 263.9) < 0.15, result


def test_get_flops_dispatches_on_segmentation_scope():
    """The same counter serves mmseg configs: a (1, 3, H, W) input through ``_forward``."""
    config = osp.join(REPO, 'configs', 'upernet_restv2_t.py')
    if not osp.isfile(config):
        pytest.skip('no UperNet config in this checkout')
    result = get_flops(config, shape=(64, 128))
    assert result['scope'] == 'mmseg' and result['shape'] == (64, 128)
    assert result['matmul'] > 0 and result['total'] > result['total_without_matmul']
