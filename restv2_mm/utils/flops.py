"""Params and FLOPs of a detector or segmentor config, split by operator as in the paper.

Convention (that of the ResTv2 tables, checked against Swin-T): mmengine's jit counter, one
multiply-add = one FLOP. The COCO table leaves the attention matrix products out, the ADE20K
table counts everything, so both totals are reported together with the split

- ``conv``: ``aten::_convolution``
- ``linear``: ``aten::linear`` / ``aten::addmm``
- ``matmul``: attention products: ``aten::matmul`` / ``bmm`` / ``mm`` / ``einsum`` and
  ``aten::scaled_dot_product_attention`` (EMSAv2 calls it; mmengine does not count it by itself,
  ``import restv2_mm`` adds it to every FlopAnalyzer: :func:`count_sdpa_in_flop_analyzers`)
- ``other``: everything else that is counted (norms, upsampling, pooling, grid sampling).

MMDetection models are measured as ``tools/analysis_tools/get_flops.py`` of mmdet does: an
(H, W) image through the data preprocessor and ``model._forward`` (RPN, box head on the
proposals, mask head). MMSegmentation models get a (1, 3, H, W) input through ``_forward``.
"""
from collections import Counter
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape
from mmengine.config import Config

CATEGORIES = ('conv', 'linear', 'matmul', 'other')

# Key under which each counted op shows up in FlopAnalyzer.by_operator() -> category.
_OPERATOR_CATEGORY = {
    'conv': 'conv',
    '_convolution': 'conv',
    'linear': 'linear',
    'addmm': 'linear',
    'matmul': 'matmul',
    'mm': 'matmul',
    'bmm': 'matmul',
    'einsum': 'matmul',
    'scaled_dot_product_attention': 'matmul',
}


def sdpa_flop_jit(inputs: List, outputs: List) -> int:
    """FLOPs of ``scaled_dot_product_attention(q, k, v)``: q k^T plus attn v, one MAC = 1 FLOP.

    q: (..., N, d), k: (..., n, d), v: (..., n, d_v) -> prod(...) * N * n * (d + d_v).
    Softmax, scaling and masking are not counted (as for Swin's explicit matmuls).
    """
    q_shape, k_shape, v_shape = (get_shape(v) for v in inputs[:3])
    *batch, num_queries, dims = q_shape
    num_keys, value_dims = k_shape[-2], v_shape[-1]
    batch_size = 1
    for size in batch:
        batch_size *= size
    return batch_size * num_queries * num_keys * (dims + value_dims)


SDPA_OP = 'aten::scaled_dot_product_attention'


def count_sdpa_in_flop_analyzers() -> None:
    """Make every ``mmengine.analysis.FlopAnalyzer`` count ``aten::scaled_dot_product_attention``.

    FlopAnalyzer starts from mmengine's module-level default handles
    (``complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS``), which have no entry for SDPA, so
    stock tools (MMDetection's and MMSegmentation's ``get_flops.py``, ``get_model_complexity_info``)
    silently skip EMSAv2's attention products. ``import restv2_mm`` adds :func:`sdpa_flop_jit`
    there. Idempotent; a handle that mmengine itself (or someone else) already put there is kept.
    """
    from mmengine.analysis import complexity_analysis
    complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS.setdefault(SDPA_OP, sdpa_flop_jit)


def operator_category(name: str) -> str:
    """conv / linear / matmul / other for a key of ``FlopAnalyzer.by_operator()``."""
    return _OPERATOR_CATEGORY.get(name.split('::')[-1], 'other')


def _build_model(cfg: Config):
    import restv2_mm  # noqa: F401  (registers ResTv2)
    from restv2_mm.utils.config import config_scope

    scope = config_scope(cfg)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    # FLOPs do not depend on weights: never read the ImageNet file.
    backbone = cfg.model.get('backbone')
    if isinstance(backbone, dict) and backbone.get('init_cfg') is not None:
        backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.eval()
    return scope, model


def _detection_inputs(model, height: int, width: int):
    """An (H, W) image batch as mmdet's data preprocessor hands it to ``_forward``."""
    from mmdet.structures import DetDataSample
    image = torch.rand(3, height, width) * 255
    sample = DetDataSample(metainfo=dict(
        img_shape=(height, width), ori_shape=(height, width), scale_factor=(1.0, 1.0),
        pad_shape=(height, width), batch_input_shape=(height, width), img_id=0))
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
    return data['inputs'], data['data_samples']


def _segmentation_inputs(model, height: int, width: int):
    from mmseg.structures import SegDataSample
    image = torch.rand(3, height, width) * 255
    sample = SegDataSample(metainfo=dict(
        img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width)))
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
    return data['inputs'], data['data_samples']


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def measure_model(model: torch.nn.Module, inputs: torch.Tensor) -> Dict[str, int]:
    """Trace ``model(inputs)`` once; FLOPs in total, without matmuls, and per category."""
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(SDPA_OP, sdpa_flop_jit)  # also without `import restv2_mm`
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_category = Counter({c: 0 for c in CATEGORIES})
    for name, flops in analyzer.by_operator().items():
        by_category[operator_category(name)] += flops
    total = sum(by_category.values())
    return dict(total=total, total_without_matmul=total - by_category['matmul'],
                **{c: by_category[c] for c in CATEGORIES})


def load_config(path: str) -> Config:
    """A config file, or one shipped with a library: ``mmdet::swin/mask-rcnn_...py``."""
    if '::' in path:
        from mmengine.hub import get_config
        return get_config(path, pretrained=False)
    return Config.fromfile(path)


def get_flops(config, shape: Optional[Sequence[int]] = None,
              cfg_options: Optional[dict] = None) -> dict:
    """Params and FLOPs of the model of ``config`` (a path or a Config) at ``shape`` = (H, W).

    The default shape is the tables': (800, 1280) for detection, (512, 2048) for segmentation.
    Returns a dict: scope, shape, params, total, total_without_matmul, conv, linear, matmul,
    other (FLOPs as integers, one multiply-add = one FLOP).
    """
    cfg = load_config(config) if isinstance(config, str) else config
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope, model = _build_model(cfg)
    if shape is None:
        shape = (800, 1280) if scope == 'mmdet' else (512, 2048)
    height, width = shape
    with torch.no_grad():
        if scope == 'mmdet':
            inputs, data_samples = _detection_inputs(model, height, width)
        else:
            inputs, data_samples = _segmentation_inputs(model, height, width)
        # Trace the plain tensor forward (mmdet's get_flops does the same); the data samples
        # argument is named differently in mmdet and mmseg, so pass it by position.
        plain_forward = model._forward
        model.forward = lambda batch_inputs: plain_forward(batch_inputs, data_samples)
        result = measure_model(model, inputs)
    return dict(scope=scope, shape=(height, width), params=count_params(model), **result)


def format_flops_report(result: dict) -> str:
    """Human-readable lines: params, both totals and the Table 3b split, in G/M."""
    height, width = result['shape']
    g = 1e9
    split = ' / '.join(f'{result[c] / g:.2f}' for c in CATEGORIES)
    return '\n'.join([
        f'Input shape: {height}x{width} (H x W), scope: {result["scope"]}',
        f'Params: {result["params"] / 1e6:.2f}M',
        f'FLOPs (all ops): {result["total"] / g:.2f}G',
        f'FLOPs without attention matmuls: {result["total_without_matmul"] / g:.2f}G',
        f'FLOPs by operator, conv / linear / matmul / other: {split} G',
        'One multiply-add = one FLOP (mmengine counter). COCO tables (Table 3/4) use the total '
        'without matmuls; the ADE20K table (Table 5) uses all ops.',
    ])
