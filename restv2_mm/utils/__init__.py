from .config import check_pretrained_weights, config_scope, load_tool_config

__all__ = ['check_pretrained_weights', 'config_scope', 'load_tool_config']
