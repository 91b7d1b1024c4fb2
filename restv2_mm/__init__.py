"""ResTv2 backbones for MMDetection 3.x and MMSegmentation 1.x.

``import restv2_mm`` (or ``custom_imports = dict(imports=['restv2_mm'])`` in a config) registers
``type='ResTv2'`` in both libraries' MODELS and lets mmengine resume its own checkpoints on
torch >= 2.6 (see :mod:`restv2_mm.engine.checkpoint_compat`).
"""
from .engine import allow_mmengine_checkpoints
from .models import ResTv2
from .registry import register_backbone
from .version import __version__

REGISTERED_SCOPES = register_backbone()
allow_mmengine_checkpoints()

__all__ = ['ResTv2', 'REGISTERED_SCOPES', '__version__']
