"""Figure 3 of the ResTv2 paper: relative log amplitude of Fourier-transformed feature maps.

    python tools/analysis/fourier.py configs/mask_rcnn_restv2_t.py \
        [--checkpoint CKPT] [--images DIR] --out docs/figures/fourier_restv2_t.png

For every ResTv2 block: 2D FFT of its output map per channel, shifted, log amplitude, averaged
over channels and images, read along the half diagonal from frequency 0 to pi, minus the value
at 0. Left: one line per block, coloured by depth; right: Delta log amplitude (pi minus 0) per
block. Without --checkpoint the backbone is randomly initialised, and the title says so; without
--images the built-in image set (restv2_mm.analysis.images) is used.
"""
import argparse
import os.path as osp
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from restv2_mm.analysis import (add_analysis_arguments, build_backbone,  # noqa: E402
                                collect_block_outputs, delta_log_amplitude,
                                load_images, preprocess, relative_log_amplitude,
                                save_titled_figure)
from restv2_mm.analysis.features import short_block_labels  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Fourier analysis of ResTv2 feature maps (Figure 3)')
    add_analysis_arguments(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model, cfg = build_backbone(args.config, args.checkpoint, args.cfg_options)
    images = load_images(args.images, args.img_size, args.num_images)
    feats = collect_block_outputs(model, preprocess(images, cfg), args.batch_size)
    labels = short_block_labels(model)

    curves = [relative_log_amplitude(f) for f in feats.values()]
    deltas = np.array([delta_log_amplitude(v) for v, _ in curves])

    n = len(curves)
    cmap = plt.get_cmap('plasma')
    colours = [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw=dict(width_ratios=(1, 1.1)))
    for (values, freqs), colour, label, f in zip(curves, colours, labels, feats.values()):
        ax.plot(freqs.numpy(), values.numpy(), '-o', ms=2.5, lw=1.4, color=colour,
                label=f'{label} ({f.shape[-2]}x{f.shape[-1]})')
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xticklabels(['0.0π', '0.25π', '0.5π', '0.75π', '1.0π'])
    ax.set_xlabel('normalised frequency (half diagonal of the shifted spectrum)')
    ax.set_ylabel('relative log amplitude  (log|F| − log|F(0)|)')
    ax.axhline(0, color='0.6', lw=0.8)
    ax.grid(alpha=0.3)
    ax.legend(title='block (map size)', fontsize=7.5, title_fontsize=8, ncol=2, loc='lower left')
    ax.set_title('Relative log amplitude per block')

    x = np.arange(1, n + 1)
    ax2.plot(x, deltas, color='0.5', lw=1, zorder=1)
    ax2.scatter(x, deltas, c=colours, s=45, zorder=2, edgecolors='k', linewidths=0.4)
    stage_of = [lab.split('.')[0] for lab in labels]
    for i in range(1, n):
        if stage_of[i] != stage_of[i - 1]:
            ax2.axvline(i + 0.5, color='0.75', ls='--', lw=0.8)
    ax2.set_xticks(x)
    ax2.set_xticklabels(labels, rotation=45, ha='right', fontsize=8)
    ax2.set_xlabel('block (stage.block, network order; dashed lines: stage boundaries)')
    ax2.set_ylabel('Δ log amplitude  (at 1.0π − at 0.0π)')
    ax2.grid(alpha=0.3)
    ax2.set_title('Δ log amplitude per block (higher = more high-frequency)')

    title = save_titled_figure(fig, 'ResTv2 Fourier analysis (paper Fig. 3)', args, len(images),
                               'mean over channels and images')
    for label, d in zip(labels, deltas):
        print(f'{label}: delta log amplitude {d:+.3f}')
    print('title: ' + title.replace('\n', ' | '))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
