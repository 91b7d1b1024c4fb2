"""Export a ResTv2 config to ONNX and check it against PyTorch with ONNX Runtime (CPU).

    python tools/deployment/export_onnx.py configs/mask_rcnn_restv2_t.py --out mask_rcnn_t.onnx \
        --checkpoint work_dirs/mask_rcnn_restv2_t/epoch_36.pth --shape 800 1216
    python tools/deployment/export_onnx.py configs/upernet_restv2_t.py --out upernet_t.onnx \
        --checkpoint work_dirs/upernet_restv2_t/iter_160000.pth --shape 512 512
    python tools/deployment/export_onnx.py configs/mask_rcnn_restv2_t.py --out fpn.onnx \
        --backbone-only --with-neck

Without --backbone-only a detection config exports the whole detector (inputs: normalised
padded images and their sizes; outputs: boxes, scores, labels, num_detections and, with a mask
head, masks; docs/deployment-detector.md) and a segmentation config the whole segmentor
(normalised image -> logits at the input size). Batch, height and width are dynamic; the check
runs a second size and batch the export never saw.
"""
import argparse
import sys

from mmengine.config import DictAction


def parse_args(argv=None):
    from restv2_mm.deploy import DEFAULT_OPSET, DEFAULT_TOLERANCE, MAX_OPSET, MIN_OPSET

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='a ResTv2 detection or segmentation config')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--checkpoint', help='trained weights of the whole model (mmengine '
                        'checkpoint); without it the weights are random')
    parser.add_argument('--shape', type=int, nargs=2, default=(512, 512), metavar=('H', 'W'),
                        help='input size the graph is traced at (it stays dynamic)')
    parser.add_argument('--check-shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size of the ORT-vs-PyTorch check (default: an odd size '
                        'derived from --shape)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='export the ResTv2 backbone: outputs out0..out3 (B, C_i, H_i, W_i)')
    parser.add_argument('--with-neck', action='store_true',
                        help='with --backbone-only: add the neck (FPN levels as outputs)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help=f'ONNX opset, {MIN_OPSET}..{MAX_OPSET} (whole detectors: 16..'
                        f'{MAX_OPSET}; default {DEFAULT_OPSET})')
    parser.add_argument('--threads', type=int, default=1, help='ONNX Runtime intra-op threads')
    parser.add_argument('--atol', type=float, default=1e-4)
    parser.add_argument('--rtol', type=float, default=1e-4,
                        help='backbone / segmentor: the check fails above atol + rtol * max '
                        '|PyTorch output|')
    parser.add_argument('--min-matched', type=float, default=DEFAULT_TOLERANCE.min_matched,
                        help='whole detector: the check fails when fewer than this fraction of '
                        'detections match (same label, box IoU >= '
                        f'{DEFAULT_TOLERANCE.min_iou}, score within '
                        f'{DEFAULT_TOLERANCE.score_atol})')
    parser.add_argument('--min-mask-iou', type=float, default=DEFAULT_TOLERANCE.min_mask_iou,
                        help='whole detector with masks: the check also fails when the mean '
                        'IoU of the pasted masks of matched detections is below this')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, as in tools/train.py')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from restv2_mm.deploy import DEFAULT_TOLERANCE, Tolerance, export_config
    tolerance = Tolerance(min_iou=DEFAULT_TOLERANCE.min_iou,
                          score_atol=DEFAULT_TOLERANCE.score_atol,
                          min_matched=args.min_matched, min_mask_iou=args.min_mask_iou)
    try:
        export_config(args.config, args.out, checkpoint=args.checkpoint, shape=tuple(args.shape),
                      opset=args.opset, backbone_only=args.backbone_only,
                      with_neck=args.with_neck, check_shape=args.check_shape,
                      threads=args.threads, atol=args.atol, rtol=args.rtol,
                      cfg_options=args.cfg_options, tolerance=tolerance)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f'export_onnx: error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
