"""Benchmark candidates: what is built (backbone or full model, from which config) and the
inputs it gets.

A candidate is a built-in name, an alias of a config, or a config itself (a file path or an
``mmdet::`` / ``mmseg::`` config). Every candidate is built from its config with the backbone's
``init_cfg=None`` (nothing is downloaded or read) and the same seed.
"""
import copy
import logging
import os.path as osp
import warnings
from dataclasses import dataclass
from typing import List, Optional

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
OUR_CONFIG = osp.join(ROOT, 'configs', 'mask_rcnn_restv2_t.py')
SWIN_CONFIG = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
R50_CONFIG = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
UPERNET_CONFIG = osp.join(ROOT, 'configs', 'upernet_restv2_t.py')
UPERNET_SWIN_CONFIG = ('mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_'
                       'ade20k-512x512.py')
# Short names for configs (``restv2`` and ``restv2-plain`` follow ``--config``).
ALIASES = {
    'swin-t': SWIN_CONFIG,
    'r50': R50_CONFIG,
    'upernet-restv2': UPERNET_CONFIG,
    'upernet-swin-t': UPERNET_SWIN_CONFIG,
}
BUILTIN = ('restv2', 'restv2-plain') + tuple(ALIASES)
ONNX_SUFFIX = '-onnx'
STYLES = ('global', 'win', 'cwin', 'hwin')
# Full-model inference: every detector keeps the same number of boxes (score threshold 0).
DETECTIONS_PER_IMAGE = 100


@dataclass
class Candidate:
    """One row of the benchmark table."""
    name: str
    config: str  # file path or mmdet:: / mmseg:: config
    plain: bool = False  # restv2 through the plain EMSAv2 math path
    style: Optional[str] = None  # restv2 attention style override
    onnx: bool = False  # backbone through ONNX Runtime

    @property
    def is_restv2(self) -> bool:
        return self.name.startswith('restv2')


def is_config(name: str) -> bool:
    return '::' in name or name.endswith('.py')


def resolve_candidates(models: List[str], config: str = OUR_CONFIG,
                       styles: Optional[List[str]] = None) -> List[Candidate]:
    """Candidates of ``--models`` (names, aliases or config paths; ``NAME-onnx`` for ONNX)."""
    out = []
    for model in models:
        onnx = model.endswith(ONNX_SUFFIX)
        base = model[:-len(ONNX_SUFFIX)] if onnx else model
        if base in ('restv2', 'restv2-plain'):
            plain = base == 'restv2-plain'
            if onnx and plain:
                raise ValueError('restv2-plain-onnx: the ONNX candidate exports the fast path only')
            for style in styles or [None]:
                name = base + (f'-{style}' if style else '') + (ONNX_SUFFIX if onnx else '')
                out.append(Candidate(name, config, plain=plain, style=style, onnx=onnx))
        elif base in ALIASES:
            out.append(Candidate(model, ALIASES[base], onnx=onnx))
        elif is_config(base):
            if '::' not in base and not osp.isfile(base):
                raise FileNotFoundError(f'--models: config not found: {base}')
            stem = osp.splitext(osp.basename(base.split('::')[-1]))[0]
            out.append(Candidate(stem + (ONNX_SUFFIX if onnx else ''), base, onnx=onnx))
        else:
            raise ValueError(f'--models: unknown candidate {model!r}; choose from {BUILTIN} '
                             f"(each also as NAME{ONNX_SUFFIX}), or give a config path / "
                             "an mmdet:: or mmseg:: config")
    names = [c.name for c in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f'--models: candidates named twice: {dupes}')
    return out


_LOADED_CONFIGS = {}


def load_candidate_config(cand: Candidate):
    """(config, scope) with init_cfg None and the candidate's attention style applied."""
    from restv2_mm.utils.config import config_scope, iter_config_dicts
    from restv2_mm.utils.flops import load_config
    if cand.config not in _LOADED_CONFIGS:  # parsing a config takes about a second
        _LOADED_CONFIGS[cand.config] = load_config(cand.config)
    cfg = copy.deepcopy(_LOADED_CONFIGS[cand.config])
    scope = config_scope(cfg)
    cfg.model.backbone.init_cfg = None  # never download / read weights
    if cand.style:
        if cfg.model.backbone.get('type') != 'ResTv2':
            raise ValueError(f'--styles needs a ResTv2 config, {cand.config} is not one')
        cfg.model.backbone.attn_style = cand.style
    # One process, no process group: SyncBN (mmseg's heads) computes as BN here.
    for d in iter_config_dicts(cfg.model):
        if d.get('type') == 'SyncBN':
            d['type'] = 'BN'
    return cfg, scope


def candidate_scope(cand: Candidate) -> str:
    """'mmdet' or 'mmseg', from the config's default_scope."""
    from restv2_mm.utils.config import config_scope
    from restv2_mm.utils.flops import load_config
    return config_scope(load_config(cand.config))


def equalize_head_work(cfg, scope: str, detections: int = DETECTIONS_PER_IMAGE) -> None:
    """Make full-model inference cost the same for every candidate.

    Detection: score threshold 0 and ``detections`` boxes per image, so that every detector's
    mask head runs on (and pastes) the same number of boxes whatever its random scores are; the
    RPN's NMS keeps every box (IoU threshold 1), so that the RoI heads of every two-stage
    detector get exactly ``rpn.max_per_img`` proposals (random-initialised RPNs otherwise leave
    a model-dependent number after NMS). Proposal *sizes* still differ between models, and
    RoIAlign with ``sampling_ratio=0`` samples large boxes more densely.
    Segmentation: whole-image inference (no sliding window).
    """
    if scope == 'mmseg':
        cfg.model.test_cfg = dict(mode='whole')
        return
    test_cfg = cfg.model.test_cfg
    rpn = test_cfg.get('rpn')
    if rpn is not None and rpn.get('nms') is not None:
        rpn.nms.iou_threshold = 1.0
    final = test_cfg.get('rcnn', test_cfg)  # two-stage: rcnn; single-stage: the whole test_cfg
    final.score_thr = 0.
    final.max_per_img = detections


def _registry(scope: str):
    import restv2_mm  # noqa: F401  (registers ResTv2)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    with warnings.catch_warnings():  # "the current default scope is not ...": intended here
        warnings.simplefilter('ignore', UserWarning)
        register_all_modules(init_default_scope=True)
    return MODELS


def build_candidate(cand: Candidate, settings, full_model: bool, seed: int = 0):
    """The candidate's backbone (``full_model=False``) or model, initialised from ``seed``."""
    from mmengine.logging import MMLogger
    from restv2_mm.models.reference import to_plain
    cfg, scope = load_candidate_config(cand)
    registry = _registry(scope)
    torch.manual_seed(seed)
    if full_model:
        equalize_head_work(cfg, scope, settings.detections)
        model = registry.build(cfg.model)
    else:
        model = registry.build(cfg.model.backbone)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)  # init_weights logs every tensor of the mm models
    try:
        if settings.device != 'meta':  # a dry run (runner.dry_run) checks shapes only
            model.init_weights()
    finally:
        logger.setLevel(level)
    if cand.plain:
        model = to_plain(model, copy_model=False)
    model = model.to(settings.device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.scope = scope
    return model


def make_input(settings, seed: int = 0) -> torch.Tensor:
    """A normalised (B, 3, H, W) batch, as the data preprocessor hands it to the model."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(settings.batch, 3, *settings.shape, generator=g).to(settings.device)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def data_samples(settings, scope: str, with_gt: bool, seed: int = 0):
    """One data sample per image: metas, plus random ground truth for the training modes."""
    H, W = settings.shape
    g = torch.Generator().manual_seed(seed)
    meta = dict(img_shape=(H, W), ori_shape=(H, W), pad_shape=(H, W), batch_input_shape=(H, W),
                scale_factor=(1., 1.))
    samples = []
    for _ in range(settings.batch):
        if scope == 'mmseg':
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            s = SegDataSample(metainfo=meta)
            if with_gt:
                labels = torch.randint(0, 150, (1, H, W), generator=g)
                s.gt_sem_seg = PixelData(data=labels.to(settings.device))
            samples.append(s)
            continue
        from mmdet.structures import DetDataSample
        from mmdet.structures.mask import BitmapMasks
        from mmengine.structures import InstanceData
        s = DetDataSample(metainfo=meta)
        if with_gt:
            n = 8
            xy = torch.rand(n, 2, generator=g) * torch.tensor([W * .7, H * .7])
            wh = (torch.rand(n, 2, generator=g) * .25 + .05) * torch.tensor([W, H])
            boxes = torch.cat([xy, xy + wh], 1)
            masks = torch.zeros(n, H, W, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                masks[i, y0:y1, x0:x1] = 1
            gt = InstanceData(bboxes=boxes, labels=torch.randint(0, 80, (n, ), generator=g),
                              masks=BitmapMasks(masks.numpy(), H, W))
            s.gt_instances = gt.to(settings.device) if settings.device != 'cpu' else gt
        samples.append(s)
    return samples
