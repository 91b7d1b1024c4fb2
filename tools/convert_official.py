"""Convert an official ResTv2 checkpoint (ImageNet, Detectron2 Mask R-CNN or MMSegmentation 0.x
UperNet) for restv2_mm's configs.

    python tools/convert_official.py restv2_tiny_224.pth checkpoints/restv2_tiny_mm.pth
    python tools/convert_official.py model_final.pth checkpoints/mask_rcnn_restv2_t_release.pth
    python tools/convert_official.py upernet.pth out.pth --config configs/upernet_restv2_t.py

What the file is comes from its keys: an ImageNet classifier (or other backbone weights) gives
backbone weights for ``model.backbone.init_cfg`` (the classifier's ``norm.*``/``head.*`` are
dropped; the official layout also loads there unconverted); a released Detectron2 Mask R-CNN
(``.pth``, or ``.pkl`` of numpy arrays) or MMSegmentation 0.x UperNet gives a whole model for
``tools/test.py CONFIG DST``. The result is checked against the model of ``--config`` (default:
the release-test config of the file's arch) with a strict load before it is written, as
``{'state_dict': ..., 'meta': ...}``. See docs/released-models.md.
"""
import argparse

from restv2_mm.converters import convert_checkpoint
from restv2_mm.converters.convert import ARCH_LETTERS


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='official checkpoint (.pth, or a Detectron2 .pkl)')
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument('--config', help='the config the converted weights are for (checked '
                        'against the file; default: chosen from the file)')
    args = parser.parse_args()
    report = convert_checkpoint(args.src, args.dst, config=args.config)
    print(f'found {report.found}')
    if report.left_out:
        print(f'left out {len(report.left_out)} non-persistent buffers Detectron2 itself ignores: '
              + ', '.join(report.left_out))
    for warning in report.warnings:
        print(f'warning: {warning}')
    if report.task == 'backbone':
        letter = ARCH_LETTERS[report.arch].upper()
        target = f'any ResTv2-{letter} config' if report.config is None else report.config
        print(f'for model.backbone.init_cfg of {target} (checked: every tensor of '
              f"ResTv2(arch='{report.arch}') but its output norms is in the file, with its shape)")
    else:
        print(f'for {report.config} (checked: strict load into its model)')
    if report.default_config is not None:
        print(f'   the same network as {report.default_config} (our test pipeline)')
    dataset = f', dataset_meta: {report.dataset} classes and palette' if report.dataset else ''
    print(f'wrote {args.dst}: {report.tensors} tensors, {report.params / 1e6:.2f}M parameters'
          f'{dataset}')


if __name__ == '__main__':
    main()
