"""Run a ResTv2 detector or segmentor on one image and write the drawn result.

    python tools/demo.py IMAGE CONFIG CHECKPOINT --out OUT.png [--device cpu] [--score-thr 0.3]
        [--amp]

The config's ``default_scope`` picks the library: mmdet -> ``mmdet.apis.DetInferencer``
(boxes, masks, labels above --score-thr), mmseg -> ``mmseg.apis.MMSegInferencer`` (class colours
blended at --opacity). Config and checkpoint are given as paths, so nothing is looked up or
downloaded; the backbone's ImageNet ``init_cfg`` is not needed (all weights come from the
checkpoint). Class names and palette come from the checkpoint's ``meta['dataset_meta']`` when it
has them (checkpoints written by mmengine do), else from the config's dataset. ``--amp`` runs
the model under autocast: bfloat16 on CPU, float16 on CUDA (restv2_mm.utils.amp).
"""
import argparse
import os
import os.path as osp
import sys

import numpy as np
import torch
from mmengine.config import Config, DictAction
from PIL import Image

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import restv2_mm  # noqa: E402,F401  (registers ResTv2; lets torch >= 2.6 read mmengine checkpoints)
from restv2_mm.datasets import ensure_tiny_dataset  # noqa: E402
from restv2_mm.utils import config_scope  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Draw a ResTv2 detector / segmentor result')
    p.add_argument('image', help='input image file')
    p.add_argument('config', help='detection (mmdet) or segmentation (mmseg) config')
    p.add_argument('checkpoint', help='trained detector / segmentor checkpoint')
    p.add_argument('--out', required=True, help='output image (.png or .jpg)')
    p.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'cuda:0' ...")
    p.add_argument('--score-thr', type=float, default=0.3, help='detection: minimum box score')
    p.add_argument('--opacity', type=float, default=0.5, help='segmentation: mask opacity')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    p.add_argument('--amp', action='store_true',
                   help='mixed-precision inference: autocast in bfloat16 (CPU) / float16 (CUDA)')
    return p.parse_args(argv)


def _drop_backbone_init(cfg: Config) -> None:
    """The checkpoint carries every weight; a missing ImageNet file must not matter here."""
    backbone = cfg.get('model', {}).get('backbone')
    if backbone is not None and backbone.get('type') == 'ResTv2':
        backbone['init_cfg'] = None


def run(image: str, config: str, checkpoint: str, device: str = 'cpu', score_thr: float = 0.3,
        opacity: float = 0.5, cfg_options=None, amp: bool = False) -> np.ndarray:
    """The drawn result as an RGB uint8 array; ``amp``: autocast inference (see ``--amp``)."""
    for path, what in ((image, 'image'), (config, 'config'), (checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} not found: {path}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    _drop_backbone_init(cfg)
    # A quick-start config's tiny set (the demo images of the README come from it).
    ensure_tiny_dataset(cfg)
    scope = config_scope(cfg)
    if scope == 'mmdet':
        from mmdet.apis import DetInferencer
        inferencer = DetInferencer(model=cfg, weights=checkpoint, device=device, scope='mmdet',
                                   show_progress=False)
    else:
        from mmseg.apis import MMSegInferencer
        inferencer = MMSegInferencer(model=cfg, weights=checkpoint, device=device, scope='mmseg')
    if amp:
        from restv2_mm.utils.amp import describe_amp, enable_amp_inference
        enable_amp_inference(inferencer.model, torch.device(device).type)
        print(describe_amp(device))
    if scope == 'mmdet':
        result = inferencer(image, return_vis=True, pred_score_thr=score_thr, no_save_vis=True,
                            no_save_pred=True)
    else:
        result = inferencer(image, return_vis=True, opacity=opacity)
    vis = result['visualization']
    if isinstance(vis, (list, tuple)):
        vis = vis[0]
    if vis is None:
        raise RuntimeError('the inferencer returned no visualization')
    return np.ascontiguousarray(vis)


def main(argv=None):
    args = parse_args(argv)
    vis = run(args.image, args.config, args.checkpoint, args.device, args.score_thr, args.opacity,
              args.cfg_options, amp=args.amp)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    Image.fromarray(vis).save(args.out)
    print(f'wrote {args.out} ({vis.shape[1]}x{vis.shape[0]})')


if __name__ == '__main__':
    main()
