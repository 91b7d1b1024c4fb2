"""What ResTv2 does: the Fourier (Figure 3) and CKA (Figure 4) analyses of the paper.

``fourier``: relative log amplitude of Fourier-transformed feature maps along the half diagonal;
``cka``: linear CKA; ``features``: building a config's backbone and collecting block and branch
outputs with forward hooks; ``images``: the built-in, download-free image set. The command-line
front ends are ``tools/analysis/fourier.py`` and ``tools/analysis/cka.py``.
"""
from .cka import branch_cka_matrix, linear_cka
from .features import (add_analysis_arguments, build_backbone, collect_block_outputs,
                       collect_branch_outputs, describe_weights, preprocess, save_titled_figure)
from .fourier import delta_log_amplitude, relative_log_amplitude
from .images import builtin_images, load_images

__all__ = ['add_analysis_arguments', 'branch_cka_matrix', 'linear_cka', 'build_backbone', 'collect_block_outputs',
           'collect_branch_outputs', 'describe_weights', 'preprocess', 'delta_log_amplitude',
           'relative_log_amplitude', 'builtin_images', 'load_images', 'save_titled_figure']
