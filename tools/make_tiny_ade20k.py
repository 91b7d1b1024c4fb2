"""Write a tiny synthetic ADE20K (ADEChallengeData2016 layout) for the quick start and tests.

    python tools/make_tiny_ade20k.py data/tiny_ade20k [--num-train 32] [--num-val 8] [--seed 0]

Images go to OUT_DIR/images/{training,validation}/*.jpg, labels (uint8, 0 = other,
1..150 = the ADE20K classes) to OUT_DIR/annotations/{training,validation}/*.png, so
``ADE20KDataset`` with ``data_root=OUT_DIR`` reads it like the real set. tools/train.py writes
it by itself for configs/upernet_restv2_t_tiny_ade20k.py (same files as this with the defaults).
"""
import argparse

from restv2_mm.datasets.tiny_ade20k import make_tiny_ade20k


def parse_args():
    parser = argparse.ArgumentParser(description='Write a tiny synthetic ADE20K-format set')
    parser.add_argument('out_dir', help='data root to write (e.g. data/tiny_ade20k)')
    parser.add_argument('--num-train', type=int, default=32, help='training images')
    parser.add_argument('--num-val', type=int, default=8, help='validation images (held out)')
    parser.add_argument('--seed', type=int, default=0, help='same seed, same files')
    return parser.parse_args()


def main():
    args = parse_args()
    counts = make_tiny_ade20k(args.out_dir, num_train=args.num_train, num_val=args.num_val,
                              seed=args.seed)
    print(f'tiny ADE20K written to {args.out_dir}: {counts["training"]} training and '
          f'{counts["validation"]} validation images')


if __name__ == '__main__':
    main()
