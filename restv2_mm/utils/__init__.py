from .config import check_pretrained_weights, config_scope

__all__ = ['check_pretrained_weights', 'config_scope']
