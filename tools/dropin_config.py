"""Write a config that drops ResTv2 into an MMDetection / MMSegmentation config, or check one.

    python tools/dropin_config.py \
        mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py \
        --out my_deeplabv3plus_restv2_t.py [--arch tiny] [--attn-style global]
    python tools/dropin_config.py --check my_deeplabv3plus_restv2_t.py

The written file is an ordinary config: ``_base_`` is the library config, and it sets only the
backbone and the fields that follow it (see docs/drop-in.md). ``--check`` refuses a config whose
neck / head channel fields do not fit the maps its ResTv2 returns, naming the value to write.
"""
import argparse
import os
import sys

from restv2_mm.utils.dropin import check_dropin, dropin_config_text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('base', nargs='?', help='library config: mmdet::..., mmseg::... or a path')
    parser.add_argument('--out', help='where to write the config (default: print it)')
    parser.add_argument('--arch', default='tiny', help='tiny | small | base | large')
    parser.add_argument('--attn-style', default='global', help='global | win | cwin | hwin')
    parser.add_argument('--checkpoint', help="backbone init_cfg checkpoint (default: "
                        "checkpoints/restv2_{arch}_224.pth; '' for none)")
    parser.add_argument('--check', metavar='CONFIG', help='check a config instead of writing one')
    args = parser.parse_args()
    if args.check:
        try:
            check_dropin(args.check)
        except ValueError as err:
            sys.exit(f'{args.check}: {err}')
        print(f'{args.check}: the neck / head fields fit the ResTv2 backbone')
        return
    if not args.base:
        parser.error('give a library config to drop ResTv2 into, or --check CONFIG')
    text = dropin_config_text(args.base, args.arch, args.attn_style, args.checkpoint)
    if not args.out:
        print(text, end='')
        return
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        f.write(text)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
