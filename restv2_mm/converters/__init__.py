from .official import (CLASSIFIER_PREFIXES, backbone_state_dict, convert_official,
                       is_official_layout, load_checkpoint_file, save_converted, unwrap_state_dict)

__all__ = ['CLASSIFIER_PREFIXES', 'backbone_state_dict', 'convert_official', 'is_official_layout',
           'load_checkpoint_file', 'save_converted', 'unwrap_state_dict']
