"""Registry glue: one class each goes into MMDetection's and MMSegmentation's registries.

- ``ResTv2`` (the backbone) into ``MODELS``;
- ``ResTv2LearningRateDecayOptimizerConstructor`` into ``OPTIM_WRAPPER_CONSTRUCTORS``;
- ``StopOnNonFiniteLossHook`` into ``HOOKS`` (also mmengine's root ``HOOKS``, so that a config
  of any OpenMMLab library can list it in ``custom_hooks``).

Either library may be absent; a class then registers where it can.
"""
import importlib
from typing import List

from .engine.divergence import StopOnNonFiniteLossHook
from .models import ResTv2
from .optim import ResTv2LearningRateDecayOptimizerConstructor

_SCOPES = ('mmdet', 'mmseg')


def _register(registry_name: str, name: str, cls: type, scopes=_SCOPES) -> List[str]:
    """Register ``cls`` as ``name`` in ``<scope>.registry.<registry_name>``; returns the scopes."""
    registered = []
    for scope in scopes:
        try:
            registry = getattr(importlib.import_module(f'{scope}.registry'), registry_name)
        except ImportError:
            continue
        existing = registry.module_dict.get(name)
        if existing is None:
            registry.register_module(name=name, module=cls)
        elif existing is not cls:
            raise RuntimeError(
                f'{scope} already has another class registered as {name} in {registry_name}: '
                f'{existing}')
        registered.append(scope)
    return registered


def register_backbone() -> List[str]:
    """Register :class:`ResTv2` as ``type='ResTv2'``; returns the scopes it is registered in."""
    return _register('MODELS', 'ResTv2', ResTv2)


def register_optim_constructor() -> List[str]:
    """Register the lr-decay constructor as
    ``constructor='ResTv2LearningRateDecayOptimizerConstructor'``; returns its scopes."""
    return _register('OPTIM_WRAPPER_CONSTRUCTORS', 'ResTv2LearningRateDecayOptimizerConstructor',
                     ResTv2LearningRateDecayOptimizerConstructor)


def register_hooks() -> List[str]:
    """Register :class:`~restv2_mm.engine.divergence.StopOnNonFiniteLossHook` as
    ``type='StopOnNonFiniteLossHook'``; returns its scopes."""
    return _register('HOOKS', 'StopOnNonFiniteLossHook', StopOnNonFiniteLossHook,
                     scopes=('mmengine', *_SCOPES))
