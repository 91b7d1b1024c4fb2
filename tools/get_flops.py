"""Params and FLOPs of a config's model, as in the paper's tables.

    python tools/get_flops.py CONFIG [--shape H W] [--json] [--cfg-options k=v ...]

Prints params, total FLOPs, FLOPs without the attention matmuls (the COCO tables' convention)
and the split by operator (conv / linear / matmul / other, Table 3b). One multiply-add counts
as one FLOP. Default shape: 800 1280 for detection configs, 512 2048 for segmentation configs.
"""
import argparse
import json

import torch
from mmengine.config import DictAction

from restv2_mm.utils.flops import format_flops_report, get_flops


def parse_args():
    parser = argparse.ArgumentParser(description='Params and FLOPs of a model config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size (default: 800 1280 for mmdet, 512 2048 for mmseg)')
    parser.add_argument('--json', action='store_true', help='print one JSON object instead')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    return parser.parse_args()


def main():
    args = parse_args()
    torch.manual_seed(0)
    result = get_flops(args.config, shape=args.shape, cfg_options=args.cfg_options)
    if args.json:
        print(json.dumps(dict(result, config=args.config, shape=list(result['shape']))))
    else:
        print(format_flops_report(result))


if __name__ == '__main__':
    main()
