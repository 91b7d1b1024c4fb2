from .atomic_io import atomic_write_bytes, make_local_writes_atomic
from .checkpoint_compat import (allow_checkpoint_globals, allow_mmengine_checkpoints,
                                load_local_checkpoint, mmengine_checkpoint_globals)
from .checkpoint_files import (CheckpointFileError, check_checkpoint_file, checkpoint_problem,
                               find_resumable_checkpoint, resume_candidates)
from .crash_safe_training import capture_rng_state, make_training_crash_safe, restore_rng_state
from .divergence import NonFiniteLossError, StopOnNonFiniteLossHook
from .finite_state import NonFiniteStateError, checkpoint_nonfinite_names, file_nonfinite_names
from .image_loading import CorruptImageError, image_bytes_problem, make_image_loading_explicit

__all__ = ['allow_checkpoint_globals', 'allow_mmengine_checkpoints', 'load_local_checkpoint',
           'mmengine_checkpoint_globals', 'atomic_write_bytes', 'make_local_writes_atomic',
           'CheckpointFileError', 'check_checkpoint_file', 'checkpoint_problem',
           'find_resumable_checkpoint', 'resume_candidates', 'capture_rng_state',
           'restore_rng_state', 'make_training_crash_safe', 'CorruptImageError',
           'image_bytes_problem', 'make_image_loading_explicit', 'NonFiniteLossError',
           'StopOnNonFiniteLossHook', 'NonFiniteStateError', 'checkpoint_nonfinite_names',
           'file_nonfinite_names']
