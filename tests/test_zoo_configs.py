"""The zoo configs beyond the paper: Cascade Mask R-CNN T/S/B, RetinaNet-T 1x/3x, UperNet-T styles.

Each config is built with the real mm registries as ``tools/train.py`` would run it on a CPU
(SyncBN reverted to BN, ``AmpOptimWrapper`` swapped for fp32 by ``use_fp32_without_cuda``, the
config's own optimizer constructor), then runs one real ``train_step`` and one ``test_step`` at a
small size with fewer proposals. The FLOPs at the tables' sizes are in tests/test_metafile.py.
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm

import restv2_mm  # noqa: F401
from restv2_mm.utils.launch import use_fp32_without_cuda

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def config_path(name):
    return osp.join(REPO, 'configs', f'{name}.py')


CASCADE = {'t': ('tiny', 0.1), 's': ('small', 0.2), 'b': ('base', 0.3)}
STYLES = ('win', 'cwin', 'hwin')
HEIGHT, WIDTH = 128, 160
# Fewer proposals at 128x160: the heads, not the backbone, dominate on a CPU.
FEWER_PROPOSALS = {
    'cascade': {
        'model.train_cfg.rpn_proposal.nms_pre': 200,
        'model.train_cfg.rpn_proposal.max_per_img': 100,
        'model.test_cfg.rpn.nms_pre': 200,
        'model.test_cfg.rpn.max_per_img': 50,
        'model.test_cfg.rcnn.max_per_img': 10,
        **{f'model.train_cfg.rcnn.{stage}.sampler.num': 64 for stage in range(3)},
    },
    'retinanet': {'model.test_cfg.nms_pre': 200, 'model.test_cfg.max_per_img': 10},
}


def build_runnable(name, scope, cfg_options=None):
    """(cfg, model, optim_wrapper) of a config as tools/train.py runs it without a GPU."""
    from mmengine.optim import build_optim_wrapper
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(config_path(name))
    cfg.model.backbone.init_cfg = None  # no ImageNet file here
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if not torch.cuda.is_available():
        # The detection configs ask for AMP (as tools/train.py: fp32 without CUDA).
        assert use_fp32_without_cuda(cfg) == (scope == 'mmdet')
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    return cfg, model, build_optim_wrapper(model, cfg.optim_wrapper)


def detection_batch(with_masks):
    """One (3, H, W) uint8 image with 3 boxes (and masks), as the data loader gives it."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    samples, images = [], []
    for i in range(1):
        boxes = torch.tensor([[10., 12., 70., 90.], [60., 30., 150., 120.], [5., 70., 40., 125.]])
        instances = InstanceData(bboxes=boxes + i, labels=torch.tensor([0, 17, 56]))
        if with_masks:
            masks = torch.zeros(3, HEIGHT, WIDTH, dtype=torch.uint8)
            for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                masks[k, y1:y2, x1:x2] = 1
            instances.masks = BitmapMasks(masks.numpy(), HEIGHT, WIDTH)
        sample = DetDataSample(metainfo=dict(img_shape=(HEIGHT, WIDTH), ori_shape=(HEIGHT, WIDTH),
                                             scale_factor=(1., 1.), flip=False))
        sample.gt_instances = instances
        samples.append(sample)
        images.append(torch.randint(0, 256, (3, HEIGHT, WIDTH), dtype=torch.uint8))
    return dict(inputs=images, data_samples=samples)


def parameters_without_grad(model):
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def check_train_then_test(model, optim_wrapper, batch):
    before = model.backbone.stem.proj[0].weight.detach().clone()
    model.train()
    # optim_wrapper.update_params zeroes the grads after the step: keep them for the check.
    optim_wrapper.zero_grad = lambda *args, **kwargs: None
    log_vars = model.train_step(batch, optim_wrapper)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in log_vars.values()), log_vars
    assert not torch.equal(before, model.backbone.stem.proj[0].weight)  # the step moved it
    assert parameters_without_grad(model) == []
    model.eval()
    with torch.no_grad():
        return model.test_step(dict(inputs=batch['inputs'][:1],
                                    data_samples=batch['data_samples'][:1]))[0]


@pytest.mark.parametrize('size', ['t', 's', 'b'])
def test_cascade_builds_trains_and_predicts(size):
    name = f'cascade_mask_rcnn_restv2_{size}'
    cfg, model, optim_wrapper = build_runnable(name, 'mmdet', FEWER_PROPOSALS['cascade'])
    arch, drop_path = CASCADE[size]
    assert (cfg.model.backbone.arch, cfg.model.backbone.drop_path_rate) == (arch, drop_path)
    # mmdet's ConvNeXt cascade 3x heads: three 4conv1fc stages regressing boxes with GIoU.
    assert type(model).__name__ == 'CascadeRCNN' and model.roi_head.num_stages == 3
    for head in model.roi_head.bbox_head:
        assert (head.num_shared_convs, head.num_shared_fcs) == (4, 1)
        assert type(head.loss_bbox).__name__ == 'GIoULoss' and head.reg_decoded_bbox
    # The released ResTv2 recipe where it differs from ConvNeXt's.
    assert cfg.optim_wrapper.optimizer.lr == 1e-4 and 'constructor' not in cfg.optim_wrapper
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=0.01, norm_type=2)
    assert [t.type for t in cfg.train_pipeline][2:4] == ['RandomCrop', 'RandomChoiceResize']
    assert cfg.train_cfg.max_epochs == 36

    result = check_train_then_test(model, optim_wrapper, detection_batch(with_masks=True))
    instances = result.pred_instances
    assert {'bboxes', 'scores', 'labels', 'masks'} <= set(instances.keys())
    assert instances.masks.shape[-2:] == (HEIGHT, WIDTH)


@pytest.mark.parametrize('name', ['retinanet_restv2_t', 'retinanet_restv2_t_3x'])
def test_retinanet_builds_trains_and_predicts(name):
    cfg, model, optim_wrapper = build_runnable(name, 'mmdet', FEWER_PROPOSALS['retinanet'])
    assert type(model).__name__ == 'RetinaNet'
    # P3-P7: strides 8..128 from stages 2-4 and two extra convs on the backbone's last map.
    assert model.backbone.out_indices == (1, 2, 3)
    assert model.neck.add_extra_convs == 'on_input' and model.neck.num_outs == 5
    assert model.bbox_head.prior_generator.strides == [(8, 8), (16, 16), (32, 32), (64, 64),
                                                       (128, 128)]
    batch = detection_batch(with_masks=False)
    data = model.data_preprocessor(batch, False)
    with torch.no_grad():
        feats = model.extract_feat(data['inputs'])
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    if name.endswith('_3x'):
        # The same network as the 1x config (so the same params and FLOPs), another recipe.
        # (Fresh configs: building a detector writes train_cfg/test_cfg into its head's dict.)
        assert Config.fromfile(config_path(name)).model == \
            Config.fromfile(config_path('retinanet_restv2_t')).model
        assert cfg.train_cfg.max_epochs == 36
        assert cfg.test_evaluator.metric == 'bbox'
        assert not any(t.get('with_mask') for t in cfg.train_pipeline + cfg.test_pipeline)
    else:
        assert cfg.train_cfg.max_epochs == 12
    result = check_train_then_test(model, optim_wrapper, batch)
    assert {'bboxes', 'scores', 'labels'} <= set(result.pred_instances.keys())


@pytest.mark.parametrize('style', STYLES)
def test_upernet_style_builds_trains_and_predicts(style):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    name = f'upernet_restv2_t_{style}'
    cfg = Config.fromfile(config_path(name))
    base = Config.fromfile(config_path('upernet_restv2_t'))
    # Only the style differs from the Global config; the windows are the backbone's defaults.
    assert cfg.model.backbone.attn_style == style
    assert cfg.model.backbone.window_size == (64, 32, 16, 8)
    # The Global config leaves window_size to the backbone's default, which is the same.
    cfg.model.backbone.attn_style = 'global'
    cfg.model.backbone.pop('window_size')
    assert 'window_size' not in base.model.backbone
    assert restv2_mm.models.ResTv2.default_window_size == (64, 32, 16, 8)
    assert cfg.model == base.model and cfg.optim_wrapper == base.optim_wrapper

    # At 160x192 stage 1 (40x48 tokens) fits in one 64-token window: smaller windows make every
    # stage split into several (padded) windows here.
    _, model, optim_wrapper = build_runnable(
        name, 'mmseg', {'model.backbone.window_size': (16, 8, 4, 2)})
    assert model.backbone.attn_style == style
    height, width = 160, 192
    model.data_preprocessor.size = (height, width)
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(height, width),
                                             ori_shape=(height, width)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, height, width)))
        samples.append(sample)
    batch = dict(inputs=[torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
                         for _ in range(2)], data_samples=samples)
    result = check_train_then_test(model, optim_wrapper, batch)
    assert tuple(result.pred_sem_seg.data.shape) == (1, height, width)
