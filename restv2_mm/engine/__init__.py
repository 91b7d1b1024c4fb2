from .checkpoint_compat import (allow_checkpoint_globals, allow_mmengine_checkpoints,
                                load_local_checkpoint, mmengine_checkpoint_globals)

__all__ = ['allow_checkpoint_globals', 'allow_mmengine_checkpoints', 'load_local_checkpoint',
           'mmengine_checkpoint_globals']
