"""ResTv2 backbones for MMDetection 3.x and MMSegmentation 1.x.

``import restv2_mm`` (or ``custom_imports = dict(imports=['restv2_mm'])`` in a config) registers
``type='ResTv2'`` in both libraries' MODELS (and the lr-decay optimizer constructor, and
``StopOnNonFiniteLossHook`` in HOOKS), makes mmengine's FLOP counter count scaled-dot-product
attention, lets mmengine resume its own checkpoints on torch >= 2.6 (see
:mod:`restv2_mm.engine.checkpoint_compat`), makes broken COCO annotations and label maps named
errors at dataset build (:mod:`restv2_mm.datasets.annotation_checks`), on a GPU machine whose mmcv has CPU ops only runs
mmcv's NMS and RoIAlign on CUDA tensors with torchvision's kernels
(:mod:`restv2_mm.utils.mmcv_cuda`), and releases distributed process groups at exit so that no
rank aborts in the interpreter's shutdown (:mod:`restv2_mm.utils.launch`).
"""
from .datasets.annotation_checks import make_annotation_checks_explicit
from .engine import (allow_mmengine_checkpoints, make_image_loading_explicit,
                     make_training_crash_safe)
from .models import ResTv2
from .registry import register_backbone, register_hooks, register_optim_constructor
from .utils.flops import count_sdpa_in_flop_analyzers
from .utils.launch import release_process_groups_at_exit
from .utils.mmcv_cuda import route_cuda_ops_to_torchvision
from .version import __version__

REGISTERED_SCOPES = register_backbone()
register_optim_constructor()  # the lr-decay constructor of the S/B UperNet recipe
register_hooks()  # StopOnNonFiniteLossHook: a diverging run stops with a named error
count_sdpa_in_flop_analyzers()  # stock get_flops tools count EMSAv2's attention
allow_mmengine_checkpoints()
make_training_crash_safe()  # atomic checkpoints, resume skips truncated ones, RNG states resumed
make_image_loading_explicit()  # unreadable images raise errors naming the file
make_annotation_checks_explicit()  # nan boxes / stray label values: named errors; drops: a warning
route_cuda_ops_to_torchvision()  # a GPU and mmcv with CPU ops only: NMS / RoIAlign by torchvision
release_process_groups_at_exit()  # gloo's threads cannot abort the interpreter's shutdown

__all__ = ['ResTv2', 'REGISTERED_SCOPES', '__version__']
