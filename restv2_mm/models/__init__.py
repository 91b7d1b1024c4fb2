from .attention import EMSAv2
from .restv2 import ATTN_STYLES, ResTv2, ResTv2Block, ResTv2Stage

__all__ = ['ATTN_STYLES', 'EMSAv2', 'ResTv2', 'ResTv2Block', 'ResTv2Stage']
