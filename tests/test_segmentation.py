"""UperNet + ResTv2 on ADE20K (paper Table 5): configs, params, whole-image inference, TTA pipeline.

Fast checks with the real mm registries, datasets and optimizer constructors. The end-to-end runs
of tools/train.py and tools/test.py (single-scale and --tta) and the FLOPs at 2048x512 are in
tests/test_segmentation_e2e.py (marked slow).
"""
import copy
import os.path as osp
import re

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm

import restv2_mm  # noqa: F401
from restv2_mm.datasets.tiny_ade20k import ADE20K_NUM_CLASSES, make_tiny_ade20k

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {arch: osp.join(REPO, 'configs', f'upernet_restv2_{arch}.py') for arch in 'tsb'}
QUICK_START = osp.join(REPO, 'configs', 'upernet_restv2_t_tiny_ade20k.py')
# Paper Table 5: params (M) and drop path of the ResTv2-T / S / B segmentors.
PAPER_PARAMS_M = {'t': 62.1, 's': 72.9, 'b': 87.6}
DROP_PATH = {'t': 0.1, 's': 0.2, 'b': 0.3}
ARCH = {'t': 'tiny', 's': 'small', 'b': 'base'}
# The released S/B configs' `num_layers` (blocks per stage) for their stage-wise lr decay.
RELEASE_NUM_LAYERS = {'s': (1, 2, 12, 2), 'b': (1, 3, 16, 3)}
TTA_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@pytest.fixture(scope='module', autouse=True)
def _mmseg_scope():
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)


def build_segmentor(config_path, **cfg_options):
    from mmseg.registry import MODELS
    cfg = Config.fromfile(config_path)
    cfg.model.backbone.init_cfg = None  # no ImageNet file here
    cfg.merge_from_dict(cfg_options)
    return cfg, MODELS.build(cfg.model)


@pytest.fixture(scope='module')
def _built_t():
    return build_segmentor(CONFIGS['t'])


@pytest.fixture
def segmentor_t(_built_t):
    """The ResTv2-T UperNet of configs/upernet_restv2_t.py (SyncBN heads), a fresh copy per test."""
    cfg, model = _built_t
    return copy.deepcopy(cfg), copy.deepcopy(model)


@pytest.fixture
def segmentor_t_bn(segmentor_t):
    """As it runs without a launcher: SyncBN reverted to BN, weights initialised."""
    cfg, model = segmentor_t
    model = revert_sync_batchnorm(model)
    model.init_weights()
    return cfg, model


@pytest.fixture(scope='module')
def tiny_ade20k(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('tiny_ade20k'))
    make_tiny_ade20k(root, num_train=3, num_val=2, seed=0)
    return root


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize('arch', 'tsb')
def test_params_match_table5(arch, _built_t):
    _, model = _built_t if arch == 't' else build_segmentor(CONFIGS[arch])
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params_m / PAPER_PARAMS_M[arch] - 1) < 0.005, \
        f'ResTv2-{arch.upper()} UperNet: {params_m:.2f}M vs {PAPER_PARAMS_M[arch]}M in Table 5'


@pytest.mark.parametrize('arch', 'tsb')
def test_config_follows_the_paper_recipe(arch):
    cfg = Config.fromfile(CONFIGS[arch])
    assert cfg.default_scope == 'mmseg' and 'restv2_mm' in cfg.custom_imports.imports
    backbone = cfg.model.backbone
    assert backbone.type == 'ResTv2' and backbone.arch == ARCH[arch]
    assert backbone.drop_path_rate == DROP_PATH[arch]
    assert backbone.init_cfg == dict(type='Pretrained',
                                     checkpoint=f'checkpoints/restv2_{ARCH[arch]}_224.pth')
    head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert head.type == 'UPerHead' and head.in_channels == [96, 192, 384, 768]
    assert head.channels == 512 and head.num_classes == 150
    assert aux.type == 'FCNHead' and aux.in_index == 2 and aux.in_channels == 384
    assert aux.num_classes == 150 and aux.loss_decode.loss_weight == 0.4
    assert head.norm_cfg.type == aux.norm_cfg.type == 'SyncBN'
    assert cfg.model.test_cfg.mode == 'whole'
    assert cfg.crop_size == (512, 512) and cfg.model.data_preprocessor.size == (512, 512)
    crop = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomCrop']
    assert crop[0].crop_size == (512, 512)
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'
    # 8 GPUs x 2 images = 16 per batch, 160k iterations.
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.train_cfg.max_iters == 160000
    # The released optimizers: T as in the paper's text, S and B with stage-wise lr decay.
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.betas) == ('AdamW', (0.9, 0.999))
    if arch == 't':
        assert (optimizer.lr, optimizer.weight_decay) == (6e-5, 0.01)
        assert 'constructor' not in cfg.optim_wrapper
        assert cfg.optim_wrapper.paramwise_cfg == dict(norm_decay_mult=0.)
    else:
        assert (optimizer.lr, optimizer.weight_decay) == (1.5e-4, 0.05)
        assert cfg.optim_wrapper.constructor == 'ResTv2LearningRateDecayOptimizerConstructor'
        assert cfg.optim_wrapper.paramwise_cfg == dict(
            decay_rate=0.9, decay_type='stage_wise', num_layers=RELEASE_NUM_LAYERS[arch])
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.begin, warmup.end, warmup.by_epoch) == ('LinearLR', 0, 1500, False)
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end) == \
        ('PolyLR', 1.0, 0.0, 1500, 160000)
    assert cfg.tta_model.type == 'SegTTAModel'


def test_no_weight_decay_on_norms(segmentor_t):
    from mmengine.optim import build_optim_wrapper
    cfg, model = segmentor_t
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): group['weight_decay'] for group in optim_wrapper.optimizer.param_groups
             for p in group['params']}
    norm_types = (torch.nn.LayerNorm, torch.nn.modules.batchnorm._BatchNorm)
    norms, others = [], []
    for module in model.modules():
        target = norms if isinstance(module, norm_types) else others
        target.extend(module.parameters(recurse=False))
    assert norms and others
    # Every LayerNorm of the backbone (blocks, stem, patch embeddings, sr/up norms, output
    # norms) and every BatchNorm (stem, heads) trains without decay; all else decays by 0.01.
    assert {decay[id(p)] for p in norms} == {0.0}
    assert {decay[id(p)] for p in others} == {0.01}
    names = [n for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    assert any(n.endswith('attn.sr_norm') for n in names)
    assert any(n.endswith('attn.up_norm') for n in names)


@pytest.mark.parametrize('arch', 'sb')
def test_built_optimizer_has_the_released_stage_lrs(arch):
    """S and B: the config's optimizer built on its real UperNet. Stem and patch embeddings
    at 1.5e-4 x 0.9^5, stage i's blocks at 1.5e-4 x 0.9^(4 - i), output norms and heads at
    1.5e-4; weight decay 0.05 except on 1-D tensors (norms, biases)."""
    from mmengine.optim import build_optim_wrapper
    cfg, model = build_segmentor(CONFIGS[arch])
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    lr, decay = {}, {}
    for group in optimizer.param_groups:
        for param in group['params']:
            lr[id(param)], decay[id(param)] = group['lr'], group['weight_decay']
    assert len(lr) == len(list(model.parameters()))

    def module_lr(module):
        lrs = {lr[id(p)] for p in module.parameters()}
        assert len(lrs) == 1, lrs
        return lrs.pop()

    backbone = model.backbone
    assert backbone.depths == RELEASE_NUM_LAYERS[arch]
    assert module_lr(backbone.stem) == pytest.approx(1.5e-4 * 0.9**5)
    for i, stage in enumerate(backbone.stages):
        if stage.downsample is not None:
            assert module_lr(stage.downsample) == pytest.approx(1.5e-4 * 0.9**5)
        assert module_lr(stage.blocks) == pytest.approx(1.5e-4 * 0.9**(4 - i))
        assert module_lr(getattr(backbone, f'norm{i}')) == 1.5e-4
    assert module_lr(model.decode_head) == module_lr(model.auxiliary_head) == 1.5e-4
    for name, param in model.named_parameters():
        assert decay[id(param)] == (0. if param.ndim == 1 else 0.05), name


def test_heads_use_syncbn_and_revert_to_bn_without_a_launcher(segmentor_t):
    _, model = segmentor_t
    sync = [m for m in model.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert len(sync) > 10
    # What mmengine's Runner does when it runs without a distributed launcher.
    model = revert_sync_batchnorm(model)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())


def test_cpu_data_parallel_builds_the_heads_with_bn():
    # SyncBatchNorm raises on CPU tensors once a process group exists (gloo runs without CUDA).
    from restv2_mm.utils.launch import _sync_bn_to_bn
    cfg = Config.fromfile(CONFIGS['t'])
    assert _sync_bn_to_bn(cfg.model)
    assert cfg.model.decode_head.norm_cfg.type == cfg.model.auxiliary_head.norm_cfg.type == 'BN'
    assert 'SyncBN' not in str(cfg.model)


# ----------------------------------------------------------------------------- inference
def _sample(height, width, with_label):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width)))
    if with_label:
        label = torch.randint(0, ADE20K_NUM_CLASSES, (1, height, width))
        label[:, :5] = 255  # ignored pixels, as reduce_zero_label makes them
        sample.gt_sem_seg = PixelData(data=label)
    return sample


def test_train_step_at_a_size_not_multiple_of_32(segmentor_t_bn):
    _, model = segmentor_t_bn
    height, width = 97, 131
    # The preprocessor pads training batches to ``size``: the crop itself, so nothing is padded.
    model.data_preprocessor.size = (height, width)
    model.train()
    images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8) for _ in range(2)]
    data = model.data_preprocessor(
        dict(inputs=images, data_samples=[_sample(height, width, True) for _ in range(2)]), True)
    losses = model(**data, mode='loss')
    assert set(losses) >= {'decode.loss_ce', 'aux.loss_ce'}
    loss = losses['decode.loss_ce'] + losses['aux.loss_ce']
    assert torch.isfinite(loss)
    loss.backward()
    assert model.backbone.stem.proj[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize('size', [(123, 185), (200, 333)])
def test_whole_image_inference_at_sizes_not_multiple_of_32(size, segmentor_t_bn):
    cfg, model = segmentor_t_bn
    model.eval()
    height, width = size
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    with torch.no_grad():
        # test_step: data preprocessor (no padding at test time) -> whole-image predict.
        result, = model.test_step(dict(inputs=[image],
                                       data_samples=[_sample(height, width, False)]))
    assert cfg.model.test_cfg.mode == 'whole'
    assert tuple(result.seg_logits.data.shape) == (150, height, width)
    assert tuple(result.pred_sem_seg.data.shape) == (1, height, width)
    assert torch.isfinite(result.seg_logits.data).all()


# ----------------------------------------------------------------------------- TTA pipeline
def test_real_tta_pipeline_gives_six_scales_of_2048x512_each_flipped(tiny_ade20k):
    from mmseg.registry import DATASETS
    cfg = Config.fromfile(CONFIGS['t'])
    dataset_cfg = cfg.test_dataloader.dataset
    dataset_cfg.update(data_root=tiny_ade20k, pipeline=cfg.tta_pipeline)
    dataset = DATASETS.build(dataset_cfg)
    item = dataset[0]
    views = item['data_samples']
    assert len(views) == len(item['inputs']) == 12
    height, width = views[0].ori_shape
    got = sorted((v.img_shape, v.flip) for v in views)
    expected = []
    for ratio in TTA_RATIOS:
        # keep_ratio into (2048r, 512r): the short side becomes 512r for these aspect ratios.
        factor = min(2048 * ratio / max(height, width), 512 * ratio / min(height, width))
        shape = (int(height * factor + 0.5), int(width * factor + 0.5))
        expected += [(shape, False), (shape, True)]
    assert got == sorted(expected)
    for view, inputs in zip(views, item['inputs']):
        assert tuple(inputs.shape[1:]) == view.img_shape
        # Labels stay at the original size; reduce_zero_label turned 0 into 255.
        label = view.gt_sem_seg.data
        assert tuple(label.shape[1:]) == (height, width)
        assert set(label.unique().tolist()) <= set(range(150)) | {255}
        assert 255 in label.unique().tolist()


def test_quick_start_config_is_the_paper_config_at_a_quarter_scale():
    paper, quick = Config.fromfile(CONFIGS['t']), Config.fromfile(QUICK_START)
    assert quick.model.decode_head == paper.model.decode_head
    assert quick.model.auxiliary_head == paper.model.auxiliary_head
    # From scratch it trains a few hundred iterations: only the lr value may differ.
    assert quick.optim_wrapper.optimizer.lr > paper.optim_wrapper.optimizer.lr
    quick.optim_wrapper.optimizer.lr = paper.optim_wrapper.optimizer.lr
    assert quick.optim_wrapper == paper.optim_wrapper and quick.tta_model == paper.tta_model
    assert quick.model.data_preprocessor == dict(paper.model.data_preprocessor,
                                                 size=quick.crop_size)
    assert quick.train_dataloader.dataset.type == paper.train_dataloader.dataset.type
    assert quick.test_evaluator == paper.test_evaluator
    assert [t.type for t in quick.train_dataloader.dataset.pipeline] == \
        [t.type for t in paper.train_dataloader.dataset.pipeline]
    backbone = dict(paper.model.backbone, init_cfg=None)
    assert quick.model.backbone == backbone

    def quarter(node):
        if isinstance(node, dict):
            return {k: tuple(s // 4 for s in v) if k == 'scale' else quarter(v)
                    for k, v in node.items()}
        if isinstance(node, list):
            return [quarter(v) for v in node]
        return node

    assert quick.tta_pipeline == quarter(paper.tta_pipeline)
    assert quick.test_dataloader.dataset.pipeline == quarter(paper.test_dataloader.dataset.pipeline)


# ----------------------------------------------------------------------------- tiny ADE20K
def test_tiny_ade20k_layout_and_labels(tiny_ade20k, tmp_path):
    from mmseg.registry import DATASETS
    for split, prefix, count in (('training', 'ADE_train', 3), ('validation', 'ADE_val', 2)):
        for index in range(1, count + 1):
            name = f'{prefix}_{index:08d}'
            image = cv2.imread(osp.join(tiny_ade20k, 'images', split, name + '.jpg'))
            label = cv2.imread(osp.join(tiny_ade20k, 'annotations', split, name + '.png'),
                               cv2.IMREAD_UNCHANGED)
            assert image is not None and label is not None, name
            assert label.dtype == np.uint8 and label.ndim == 2
            assert image.shape[:2] == label.shape
            assert label.shape[0] % 32 and label.shape[1] % 32
            values = set(np.unique(label).tolist())
            assert 0 in values and len(values) >= 3 and max(values) <= ADE20K_NUM_CLASSES
    # Same seed, same files.
    make_tiny_ade20k(str(tmp_path), num_train=3, num_val=2, seed=0)
    again = cv2.imread(str(tmp_path / 'annotations/training/ADE_train_00000002.png'),
                       cv2.IMREAD_UNCHANGED)
    first = cv2.imread(osp.join(tiny_ade20k, 'annotations/training/ADE_train_00000002.png'),
                       cv2.IMREAD_UNCHANGED)
    assert np.array_equal(again, first)
    # mmseg's ADE20KDataset reads it as the real set.
    cfg = Config.fromfile(CONFIGS['t'])
    dataset_cfg = cfg.train_dataloader.dataset
    dataset_cfg.data_root = tiny_ade20k
    dataset_cfg.pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                            dict(type='PackSegInputs')]
    dataset = DATASETS.build(dataset_cfg)
    assert len(dataset) == 3 and len(dataset.metainfo['classes']) == 150
    values = dataset[0]['data_samples'].gt_sem_seg.data.unique().tolist()
    assert 255 in values and any(v < 150 for v in values)  # 0 -> ignored, 1..150 -> 0..149
    assert re.match(r'ADE_train_\d{8}\.jpg', osp.basename(dataset[0]['data_samples'].img_path))
