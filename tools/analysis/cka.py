"""Figure 4 of the ResTv2 paper: linear CKA between the branches of every EMSAv2.

    python tools/analysis/cka.py configs/mask_rcnn_restv2_t.py \
        [--checkpoint CKPT] [--images DIR] --out docs/figures/cka_restv2_t.png

In every EMSAv2: "up" = the up branch (output of attn.up_norm), "com" = attention + up (the
input of attn.proj), "attn" = com - up. Left: linear CKA between all of them across the network
(samples: tokens of all images, features: channels; maps of different stages are compared on the
coarser grid). Right: the three within-module similarities per block. Without --checkpoint the
backbone is randomly initialised, and the title says so.
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
from restv2_mm.analysis import (add_analysis_arguments, branch_cka_matrix,  # noqa: E402
                                build_backbone, collect_branch_outputs,
                                load_images, preprocess, save_titled_figure)
from restv2_mm.analysis.cka import KINDS  # noqa: E402
from restv2_mm.analysis.features import short_block_labels  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Linear CKA between the EMSAv2 branches (Figure 4)')
    add_analysis_arguments(p, seed_help='seed of the initialisation and sampling')
    p.add_argument('--max-samples', type=int, default=4096,
                   help='tokens per comparison (a fixed random subset)')
    p.add_argument('--debiased', action='store_true',
                   help='unbiased HSIC estimator (less bias when tokens are few against channels)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model, cfg = build_backbone(args.config, args.checkpoint, args.cfg_options)
    images = load_images(args.images, args.img_size, args.num_images)
    branches = collect_branch_outputs(model, preprocess(images, cfg), args.batch_size)
    matrix, labels = branch_cka_matrix(branches, KINDS, args.max_samples, args.debiased,
                                       args.seed)
    matrix = matrix.numpy()
    m = len(branches)
    blocks = short_block_labels(model)

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 7.2),
                                  gridspec_kw=dict(width_ratios=(1.25, 1)))
    im = ax.imshow(matrix, cmap='magma', vmin=0, vmax=1, interpolation='nearest')
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    fs = 7 if len(labels) <= 36 else 5
    ax.set_xticklabels(labels, rotation=90, fontsize=fs)
    ax.set_yticklabels(labels, fontsize=fs)
    for k in range(1, len(KINDS)):
        ax.axhline(k * m - 0.5, color='w', lw=1.2)
        ax.axvline(k * m - 0.5, color='w', lw=1.2)
    ax.set_xlabel('representation (b = EMSAv2 / block index in network order)')
    ax.set_ylabel('representation')
    ax.set_title('Linear CKA: up / attn / com of every EMSAv2')
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label('linear CKA' + (' (debiased)' if args.debiased else ''))

    idx = {kind: KINDS.index(kind) * m for kind in KINDS}
    x = np.arange(1, m + 1)
    for (a, b), style in zip((('up', 'com'), ('attn', 'com'), ('up', 'attn')),
                             ('-o', '-s', '--^')):
        values = [matrix[idx[a] + i, idx[b] + i] for i in range(m)]
        ax2.plot(x, values, style, ms=5, label=f'CKA({a}, {b})')
    ax2.set_xticks(x)
    ax2.set_xticklabels([f'b{i} ({blk})' for i, blk in zip(x, blocks)], rotation=45, ha='right',
                        fontsize=8)
    ax2.set_ylim(-0.05 if args.debiased else 0, 1.02)
    ax2.set_xlabel('block (stage.block)')
    ax2.set_ylabel('linear CKA within the module')
    ax2.grid(alpha=0.3)
    ax2.legend(loc='best')
    ax2.set_title('Which branch does the output (com) follow?')

    title = save_titled_figure(fig, 'ResTv2 linear CKA (paper Fig. 4)', args, len(images),
                               f'up to {args.max_samples} tokens per pair')
    for i, blk in enumerate(blocks):
        print(f'b{i + 1} ({blk}): CKA(up, com) {matrix[idx["up"] + i, idx["com"] + i]:.3f}  '
              f'CKA(attn, com) {matrix[idx["attn"] + i, idx["com"] + i]:.3f}  '
              f'CKA(up, attn) {matrix[idx["up"] + i, idx["attn"] + i]:.3f}')
    print('title: ' + title.replace('\n', ' | '))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
