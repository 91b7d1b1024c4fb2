"""Convert an official ResTv2 ImageNet checkpoint to restv2_mm's (mm-style) key layout.

    python tools/convert_official.py restv2_tiny_224.pth checkpoints/restv2_tiny_mm.pth

Accepts ``{'model': sd}``, ``module.``-prefixed and bare state dicts; drops the classifier
(``norm.*``, ``head.*``); writes ``{'state_dict': ..., 'meta': ...}``. Converting is optional: the
backbone's ``init_cfg=dict(type='Pretrained', checkpoint=...)`` reads official files directly.
"""
import argparse

from restv2_mm.converters import save_converted


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='where to write the converted checkpoint')
    args = parser.parse_args()
    info = save_converted(args.src, args.dst)
    print(f'wrote {args.dst}: {info["tensors"]} tensors, {info["params"] / 1e6:.2f}M parameters')


if __name__ == '__main__':
    main()
