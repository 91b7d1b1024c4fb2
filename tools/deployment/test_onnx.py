"""Evaluate a detector exported by export_onnx.py on its config's test set with ONNX Runtime.

    python tools/deployment/test_onnx.py configs/mask_rcnn_restv2_t_tiny_coco.py tiny.onnx \
        --work-dir work_dirs/tiny_coco_onnx

The config's test pipeline, data preprocessor, dataloader and evaluator (CocoMetric) run as in
tools/test.py; only the model is the ONNX graph (restv2_mm.deploy.detector_data): its boxes are
scaled back to the original images and its masks pasted and thresholded as mmdet does. The
metrics are logged as tools/test.py logs them (coco/bbox_mAP, coco/segm_mAP, ...).
"""
import argparse
import sys

from mmengine.config import DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the detection config the graph was exported from')
    parser.add_argument('onnx', help='the exported .onnx file')
    parser.add_argument('--work-dir', help='where the logs go (default ./work_dirs/<config>)')
    parser.add_argument('--threads', type=int, default=1, help='ONNX Runtime intra-op threads')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, as in tools/test.py')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from restv2_mm.deploy import evaluate_onnx
    try:
        evaluate_onnx(args.config, args.onnx, threads=args.threads, work_dir=args.work_dir,
                      cfg_options=args.cfg_options)
    except (ValueError, FileNotFoundError) as e:
        print(f'test_onnx: error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
