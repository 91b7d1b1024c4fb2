"""Write a tiny synthetic COCO-format instance set (quick start, tests).

    python tools/make_tiny_coco.py data/tiny_coco [--num-train 64] [--num-val 16]
        [--image-size 128 128] [--seed 0]

Real COCO layout (annotations/instances_{train,val}2017.json, train2017/, val2017/), the 80
COCO categories with their real ids, polygon masks, four drawn categories each with its own
shape and colour; see restv2_mm/datasets/tiny_coco.py. tools/train.py writes it by itself for
configs/mask_rcnn_restv2_t_tiny_coco.py (same files as this with the defaults).
"""
import argparse

from restv2_mm.datasets.tiny_coco import make_tiny_coco


def parse_args():
    parser = argparse.ArgumentParser(description='Write a tiny synthetic COCO-format set')
    parser.add_argument('out_dir', help='output directory (the data_root of a config)')
    parser.add_argument('--num-train', type=int, default=64, help='training images')
    parser.add_argument('--num-val', type=int, default=16, help='validation images (held out)')
    parser.add_argument('--image-size', type=int, nargs=2, default=(128, 128),
                        metavar=('W', 'H'), help='image width and height')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    ann_files = make_tiny_coco(args.out_dir, args.num_train, args.num_val, args.image_size,
                               args.seed)
    for split, path in ann_files.items():
        print(f'{split}: {path}')


if __name__ == '__main__':
    main()
