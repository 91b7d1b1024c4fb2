from .layer_decay import (DECAY_TYPES, ResTv2LearningRateDecayOptimizerConstructor,
                          find_restv2_backbone, restv2_layer_ids)

__all__ = ['DECAY_TYPES', 'ResTv2LearningRateDecayOptimizerConstructor', 'find_restv2_backbone',
           'restv2_layer_ids']
