"""Registry glue: the one ResTv2 class goes into MMDetection's and MMSegmentation's MODELS.

Either library may be absent; the backbone then registers where it can.
"""
import importlib
from typing import List

from .models import ResTv2

_SCOPES = ('mmdet', 'mmseg')


def register_backbone() -> List[str]:
    """Register :class:`ResTv2` as ``type='ResTv2'``; returns the scopes it is registered in."""
    scopes = []
    for scope in _SCOPES:
        try:
            models = importlib.import_module(f'{scope}.registry').MODELS
        except ImportError:
            continue
        existing = models.module_dict.get('ResTv2')
        if existing is None:
            models.register_module(name='ResTv2', module=ResTv2)
        elif existing is not ResTv2:
            raise RuntimeError(f'{scope} already has another class registered as ResTv2: {existing}')
        scopes.append(scope)
    return scopes
