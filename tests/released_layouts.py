"""Synthetic files in the layouts of the authors' released fine-tuned models, for the tests.

Written from the layout tables of ../shared/docs/released-checkpoints.md (§1.1-1.3 Detectron2
Mask R-CNN, §4.1-4.2 MMSegmentation 0.x UperNet), independently of restv2_mm's converter: the
names and shapes here are the release's, not ours. The backbone names and shapes are those of the
ImageNet checkpoints (tests/reference_restv2.py ``official_shapes``), without the classifier,
plus the output norms the downstream releases add.
"""
import math
import pickle

import torch

from reference_restv2 import ARCHS, official_shapes

ARCH_LETTERS = {'tiny': 't', 'small': 's', 'base': 'b'}
# Whole-file tensor counts (facts §0.4).
D2_TENSORS = {'tiny': 320, 'small': 452, 'base': 580}
MMSEG_TENSORS = {'tiny': 360, 'small': 492, 'base': 620}
WIDTHS = (96, 192, 384, 768)


def backbone_shapes(arch, output_norm):
    """The ImageNet backbone's names and shapes without the classifier, plus the four output
    norms named ``output_norm.format(k)`` (k = 1..4)."""
    shapes = {k: v for k, v in official_shapes(arch).items()
              if not k.startswith(('norm.', 'head.'))}
    for k, width in enumerate(ARCHS[arch]['embed_dims'], start=1):
        shapes[output_norm.format(k) + '.weight'] = (width, )
        shapes[output_norm.format(k) + '.bias'] = (width, )
    return shapes


def d2_head_shapes():
    """Detectron2's FPN, RPN, box and mask heads of the release (facts §1.3): 42 tensors."""
    shapes = {}

    def layer(name, weight):
        shapes[name + '.weight'] = weight
        shapes[name + '.bias'] = (weight[1] if 'deconv' in name else weight[0], )

    for stage, width in zip(range(2, 6), WIDTHS):  # named by log2(stride)
        layer(f'backbone.fpn_lateral{stage}', (256, width, 1, 1))
        layer(f'backbone.fpn_output{stage}', (256, 256, 3, 3))
    layer('proposal_generator.rpn_head.conv', (256, 256, 3, 3))
    layer('proposal_generator.rpn_head.objectness_logits', (3, 256, 1, 1))
    layer('proposal_generator.rpn_head.anchor_deltas', (12, 256, 1, 1))
    layer('roi_heads.box_head.fc1', (1024, 256 * 7 * 7))
    layer('roi_heads.box_head.fc2', (1024, 1024))
    layer('roi_heads.box_predictor.cls_score', (81, 1024))
    layer('roi_heads.box_predictor.bbox_pred', (320, 1024))
    for k in range(1, 5):
        layer(f'roi_heads.mask_head.mask_fcn{k}', (256, 256, 3, 3))
    layer('roi_heads.mask_head.deconv', (256, 256, 2, 2))  # ConvTranspose2d: (in, out, kh, kw)
    layer('roi_heads.mask_head.predictor', (80, 256, 1, 1))
    return shapes


def mmseg_head_shapes():
    """UPerHead + auxiliary FCNHead of the release (facts §4.2): 82 tensors."""
    shapes = {}

    def conv_module(name, weight):  # ConvModule: conv without bias + BN
        shapes[name + '.conv.weight'] = weight
        for stat in ('weight', 'bias', 'running_mean', 'running_var'):
            shapes[f'{name}.bn.{stat}'] = (weight[0], )
        shapes[name + '.bn.num_batches_tracked'] = ()

    for i in range(4):
        conv_module(f'decode_head.psp_modules.{i}.1', (512, 768, 1, 1))
    conv_module('decode_head.bottleneck', (512, 768 + 4 * 512, 3, 3))
    for i, width in enumerate(WIDTHS[:3]):
        conv_module(f'decode_head.lateral_convs.{i}', (512, width, 1, 1))
        conv_module(f'decode_head.fpn_convs.{i}', (512, 512, 3, 3))
    conv_module('decode_head.fpn_bottleneck', (512, 4 * 512, 3, 3))
    shapes['decode_head.conv_seg.weight'] = (150, 512, 1, 1)
    shapes['decode_head.conv_seg.bias'] = (150, )
    conv_module('auxiliary_head.convs.0', (256, 384, 3, 3))
    shapes['auxiliary_head.conv_seg.weight'] = (150, 256, 1, 1)
    shapes['auxiliary_head.conv_seg.bias'] = (150, )
    return shapes


def d2_shapes(arch):
    backbone = backbone_shapes(arch, 'norm_{}.0')
    return {**{'backbone.bottom_up.' + k: v for k, v in backbone.items()}, **d2_head_shapes()}


def mmseg_shapes(arch):
    backbone = backbone_shapes(arch, 'norm_{}')
    return {**{'backbone.' + k: v for k, v in backbone.items()}, **mmseg_head_shapes()}


def random_tensor(name, shape, generator):
    """Weights at scales that keep activations moderate and make every tensor matter: norm and
    BN weights near 1 (not 1), biases and running means small but non-zero."""
    if name.endswith('num_batches_tracked'):
        return torch.tensor(1000)
    if name.endswith('running_var'):
        return 0.5 + torch.rand(shape, generator=generator)
    if name.endswith('running_mean'):
        return 0.1 * torch.randn(shape, generator=generator)
    if len(shape) == 1 and name.endswith('.weight'):  # LayerNorm / BatchNorm scale
        return 1 + 0.1 * torch.randn(shape, generator=generator)
    if len(shape) == 1:
        return 0.05 * torch.randn(shape, generator=generator)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=generator) / math.sqrt(fan_in)


# Gains on Detectron2's heads: random class weights scaled so that a few tens of the proposals
# of a small image pass the 0.05 test threshold (40 detections of 4 classes on the 64x96 image
# of the exactness test; no score within 8e-5 of the threshold), moderate box deltas
# (|dw|, |dh| well inside mmdet's +-4.135 clamp, which Detectron2 only applies above) and mask
# logits away from 0.
D2_HEAD_GAINS = {
    'roi_heads.box_predictor.cls_score.weight': 0.57,
    'roi_heads.box_predictor.bbox_pred.weight': 0.5,
    'proposal_generator.rpn_head.anchor_deltas.weight': 0.3,
    'roi_heads.mask_head.predictor.weight': 3.,
}


def random_released_state_dict(shapes, seed=0, gains=None):
    """Random weights for ``shapes`` (name -> shape); the backbone part as the ImageNet tests'."""
    generator = torch.Generator().manual_seed(seed)
    sd = {name: random_tensor(name, shape, generator) for name, shape in shapes.items()}
    for name, gain in (gains or {}).items():
        sd[name] = sd[name] * gain
    return sd


def zeros_state_dict(shapes):
    """Cheap tensors of the right shapes (layout and count checks of S and B)."""
    return {name: torch.zeros(shape, dtype=torch.int64 if name.endswith('num_batches_tracked')
                              else torch.float32) for name, shape in shapes.items()}


def random_d2_state_dict(arch, seed=0):
    return random_released_state_dict(d2_shapes(arch), seed, D2_HEAD_GAINS)


def random_mmseg_state_dict(arch, seed=0):
    return random_released_state_dict(mmseg_shapes(arch), seed)


def write_d2_pth(path, model, version='v0.6'):
    """What Detectron2's checkpointer writes for ``model_final.pth`` (facts §1.1): the model plus
    the trainer / optimizer / scheduler state of the given Detectron2 version."""
    scheduler = {'base_lrs': [1e-4], 'last_epoch': 270000}
    if version == 'v0.4':
        extra = {'optimizer': {'state': {}, 'param_groups': [
            {'lr': 1e-6, 'betas': (0.9, 0.999), 'eps': 1e-8, 'weight_decay': 0.05,
             'amsgrad': False, 'params': [0, 1]}]}, 'scheduler': scheduler}
    elif version == 'v0.6':
        extra = {'trainer': {'iteration': 269999, 'hooks': {'LRScheduler': scheduler}}}
    elif version == 'head':  # later Detectron2: the AMP trainer adds optimizer and grad scaler
        extra = {'trainer': {'iteration': 269999, 'hooks': {'LRScheduler': scheduler},
                             '_trainer': {'optimizer': {'state': {}, 'param_groups': []},
                                          'grad_scaler': {'scale': 65536.0, 'growth_factor': 2.0,
                                                          'backoff_factor': 0.5,
                                                          'growth_interval': 2000,
                                                          '_growth_tracker': 17}}}}
    else:
        raise ValueError(version)
    torch.save({'model': model, **extra, 'iteration': 269999}, path)


def write_d2_pkl(path, model, protocol=4):
    """Detectron2's model-zoo ``.pkl``: a plain pickle of numpy arrays. Python 2 era files use
    protocol 2, which pickles array data through ``_codecs.encode`` (slow for whole models; the
    tests read a small protocol-2 file separately)."""
    with open(path, 'wb') as f:
        pickle.dump({'model': {k: v.numpy() for k, v in model.items()},
                     '__author__': 'restv2_mm tests', 'matching_heuristics': True}, f,
                    protocol=protocol)


def write_mmseg0(path, state_dict):
    """What mmcv 1.x's ``save_checkpoint`` writes at the end of an MMSegmentation 0.x run
    (facts §4.1): meta, state_dict and the optimizer state."""
    meta = {'mmcv_version': '1.7.1', 'time': 'Mon Jul 11 10:00:00 2022',
            'env_info': 'sys.platform: linux', 'seed': 0, 'exp_name': 'upernet_restv2_t.py',
            'mmseg_version': '0.30.0+abc1234', 'config': "norm_cfg = dict(type='SyncBN')",
            'CLASSES': tuple(f'class{i}' for i in range(150)),
            'PALETTE': [[i, 255 - i, i // 2] for i in range(150)],
            'epoch': 1, 'iter': 160000, 'hook_msgs': {'last_ckpt': 'iter_160000.pth'}}
    optimizer = {'state': {}, 'param_groups': [{'lr': 6e-11, 'weight_decay': 0.01,
                                                'params': [0, 1]}]}
    torch.save({'meta': meta, 'state_dict': state_dict, 'optimizer': optimizer}, path)


def restv1_like(d2_state_dict):
    """A Detectron2 file whose backbone has ResTv1's tell-tale names (release ``rest.py``): a
    ``stem.conv1`` stem and ``attn.transform_conv`` instead of ``attn.up.0`` (facts §2)."""
    out = {}
    for key, value in d2_state_dict.items():
        key = key.replace('.stem.proj.0.', '.stem.conv1.')
        if '.attn.up.0.' in key:
            key = key.replace('.attn.up.0.', '.attn.transform_conv.')
        if '.attn.up_norm.' not in key:
            out[key] = value
    return out
