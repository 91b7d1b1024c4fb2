"""Images in, COCO metrics out: the config's test pipeline and data preprocessor around an
exported detector (:mod:`restv2_mm.deploy.detector`) run by ONNX Runtime.

* :func:`preprocess` feeds raw images the way ``tools/test.py`` does: the config's test
  pipeline (load, resize; annotations skipped) and its ``DetDataPreprocessor`` (BGR -> RGB,
  mean / std, zero padding to the size divisor) -> the graph's ``input`` and ``image_sizes``.
* :func:`to_data_samples` turns the graph's outputs into mmdet's predictions as
  ``predict(rescale=True)`` returns them: boxes divided by the resize scale, masks pasted into
  the original image and thresholded at ``mask_thr_binary``.
* :class:`OnnxRuntimeDetector` is an mmengine model doing both around an ONNX Runtime session,
  and :func:`evaluate_onnx` runs it through mmengine's test loop with the config's dataloader
  and evaluator (``tools/deployment/test_onnx.py``).
"""
import copy
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.model import BaseModel

from .detector import MASK_OUTPUT
from .detector_check import paste_masks_like_mmdet


def _mmdet_registry():
    import restv2_mm  # noqa: F401  (registers ResTv2)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    return MODELS


def build_data_preprocessor(cfg) -> torch.nn.Module:
    """The config's ``model.data_preprocessor`` (mmdet's DetDataPreprocessor)."""
    return _mmdet_registry().build(copy.deepcopy(cfg.model.data_preprocessor))


def inference_pipeline(cfg):
    """The config's test pipeline for raw images (paths or BGR arrays): images loaded by
    mmdet's ``InferencerLoader``, annotation loading dropped, as mmdet's DetInferencer does."""
    from mmengine.dataset import Compose
    _mmdet_registry()
    steps = []
    for step in copy.deepcopy(cfg.test_dataloader.dataset.pipeline):
        kind = str(step['type']).split('.')[-1]
        if kind == 'LoadAnnotations':
            continue
        if kind == 'LoadImageFromFile':
            step['type'] = 'mmdet.InferencerLoader'
        if kind == 'PackDetInputs' and 'meta_keys' in step:
            step['meta_keys'] = tuple(k for k in step['meta_keys'] if k != 'img_id')
        steps.append(step)
    return Compose(steps)


def preprocess(cfg, images: Sequence[Union[str, np.ndarray]]):
    """Images (file paths or H x W x 3 BGR uint8 arrays) -> (input (B, 3, H, W) float32,
    image_sizes (B, 2) int64, mmdet data samples with the metas :func:`to_data_samples`
    needs), as the config's test pipeline and data preprocessor make them."""
    from mmengine.dataset import pseudo_collate
    pipeline = inference_pipeline(cfg)
    batch = build_data_preprocessor(cfg)(pseudo_collate([pipeline(img) for img in images]),
                                         False)
    samples = batch['data_samples']
    sizes = np.array([s.img_shape[:2] for s in samples], dtype=np.int64)
    return batch['inputs'].float().numpy(), sizes, samples


def to_data_samples(outputs: Sequence[np.ndarray], data_samples: list,
                    mask_threshold: Optional[float] = 0.5) -> list:
    """Put the graph's detections of each image into ``data_samples[b].pred_instances`` as
    mmdet's ``predict(rescale=True)`` does: boxes in original-image pixels (divided by the
    sample's ``scale_factor``), masks (with a mask output) pasted into ``ori_shape`` and
    thresholded (bool). Returns ``data_samples``."""
    from mmengine.structures import InstanceData
    boxes, scores, labels, counts = outputs[:4]
    for b, sample in enumerate(data_samples):
        n = int(counts[b])
        w_scale, h_scale = sample.metainfo.get('scale_factor', (1., 1.))
        box = torch.from_numpy(np.array(boxes[b, :n]))
        box /= box.new_tensor([w_scale, h_scale, w_scale, h_scale])
        pred = InstanceData(bboxes=box, scores=torch.from_numpy(np.array(scores[b, :n])),
                            labels=torch.from_numpy(np.array(labels[b, :n])))
        if len(outputs) > 4 and mask_threshold is not None:
            h, w = sample.metainfo['ori_shape'][:2]
            pred.masks = torch.from_numpy(
                paste_masks_like_mmdet(outputs[4][b, :n], box.numpy(), h, w, mask_threshold))
        sample.pred_instances = pred
    return data_samples


class OnnxRuntimeDetector(BaseModel):
    """An exported detector in ONNX Runtime as an mmengine model (``predict`` mode only):
    the config's data preprocessor, the graph, then :func:`to_data_samples`."""

    def __init__(self, onnx_file: str, data_preprocessor: torch.nn.Module,
                 mask_threshold: Optional[float] = 0.5, threads: int = 1):
        super().__init__(data_preprocessor=data_preprocessor)
        from .onnx import ort_session
        self.session = ort_session(onnx_file, threads)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.mask_threshold = mask_threshold if MASK_OUTPUT in self.output_names else None

    def forward(self, inputs: torch.Tensor, data_samples: Optional[list] = None,
                mode: str = 'predict'):
        if mode != 'predict':
            raise ValueError(f"an ONNX Runtime detector only predicts; got mode={mode!r}")
        sizes = np.array([s.img_shape[:2] for s in data_samples], dtype=np.int64)
        outputs = self.session.run(None, {'input': inputs.float().contiguous().cpu().numpy(),
                                          'image_sizes': sizes})
        return to_data_samples(outputs, data_samples, self.mask_threshold)


def config_mask_threshold(cfg) -> Optional[float]:
    """``mask_thr_binary`` of a detector config's R-CNN test settings (None without one)."""
    rcnn = cfg.model.get('test_cfg', {}).get('rcnn')
    return None if rcnn is None else float(rcnn.get('mask_thr_binary', 0.5))


def evaluate_onnx(config: str, onnx_file: str, threads: int = 1,
                  work_dir: Optional[str] = None,
                  cfg_options: Optional[dict] = None) -> Dict[str, float]:
    """Evaluate ``onnx_file`` (exported from ``config``) on the config's test set with its
    test dataloader and evaluator, through mmengine's test loop; returns the metrics (and logs
    them as ``tools/test.py`` does)."""
    import os.path as osp

    from mmengine.runner import Runner

    from restv2_mm.datasets import ensure_tiny_dataset
    from restv2_mm.utils import load_tool_config

    if not osp.isfile(onnx_file):
        raise FileNotFoundError(f'ONNX file not found: {onnx_file}')
    cfg, scope = load_tool_config(config, 'none', cfg_options, work_dir)
    if scope != 'mmdet':
        raise ValueError(f'{config}: ONNX evaluation is for detection configs (mmdet), got {scope}')
    ensure_tiny_dataset(cfg)
    model = OnnxRuntimeDetector(onnx_file, build_data_preprocessor(cfg),
                                config_mask_threshold(cfg), threads)
    runner = Runner(model=model, work_dir=cfg.work_dir, test_dataloader=cfg.test_dataloader,
                    test_evaluator=cfg.test_evaluator, test_cfg=cfg.get('test_cfg', dict()),
                    default_hooks=cfg.get('default_hooks'), default_scope=cfg.default_scope,
                    env_cfg=cfg.get('env_cfg', dict()), log_processor=cfg.get('log_processor'),
                    log_level=cfg.get('log_level', 'INFO'), visualizer=cfg.get('visualizer'),
                    randomness=cfg.get('randomness', dict(seed=None)), cfg=cfg)
    return runner.test()


def run_images(session, cfg, images: Sequence[Union[str, np.ndarray]]) -> list:
    """Detections of raw images by an ONNX Runtime ``session`` of an exported detector:
    mmdet data samples with ``pred_instances`` in original-image pixels."""
    inputs, sizes, samples = preprocess(cfg, images)
    outputs = session.run(None, {'input': inputs, 'image_sizes': sizes})
    names = [o.name for o in session.get_outputs()]
    threshold = config_mask_threshold(cfg) if MASK_OUTPUT in names else None
    return to_data_samples(outputs, samples, threshold)
