from .convert import ConversionReport, convert_checkpoint, dataset_meta
from .loading import ArrayUnpickler, load_array_pickle, read_checkpoint
from .official import (CLASSIFIER_PREFIXES, backbone_state_dict, convert_official,
                       is_official_layout, load_checkpoint_file, rename_official_key,
                       unwrap_state_dict)
from .released import (DETECTRON2, MMSEG0, RELEASED_TENSORS, ArchMismatchError, ConversionError,
                       ModelMismatchError, ResTv1CheckpointError, TaskMismatchError,
                       TensorCountError, UnknownArchError, UnknownKeysError, convert_released,
                       find_released_layout, identify_arch)

__all__ = ['CLASSIFIER_PREFIXES', 'backbone_state_dict', 'convert_official', 'is_official_layout',
           'load_checkpoint_file', 'rename_official_key', 'unwrap_state_dict',
           'ConversionReport', 'convert_checkpoint', 'dataset_meta', 'ArrayUnpickler',
           'load_array_pickle', 'read_checkpoint', 'DETECTRON2', 'MMSEG0', 'RELEASED_TENSORS',
           'ArchMismatchError', 'ConversionError', 'ModelMismatchError', 'ResTv1CheckpointError',
           'TaskMismatchError', 'TensorCountError', 'UnknownArchError', 'UnknownKeysError',
           'convert_released', 'find_released_layout', 'identify_arch']
