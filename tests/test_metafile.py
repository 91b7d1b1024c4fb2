"""configs/metafile.yml: the model zoo in OpenMMLab's metafile format.

Fast: the file has mmdet's metafile layout, lists every config of configs/ (but the tiny
quick-start ones) exactly once, every Config builds (backbone init_cfg=None) and has the
Parameters it states (within 1%), the paper's numbers are where the paper has them, and
MMDetection's / MMSegmentation's Inferencers build our config paths and run them.

Slow: the stated FLOPs (all ops and without attention matmuls) equal what get_flops measures,
within 1%. Measuring all 17 configs takes ~20 min on 2 CPU cores, so one config per family is
checked: Cascade Mask R-CNN-T, RetinaNet-T and UperNet-T-Win (~3-4 min together); the others
share their family's heads and counter path, and the Mask R-CNN and UperNet T/S/B FLOPs are
checked against the paper in tests/test_detection.py and tests/test_segmentation_e2e.py.
"""
import glob
import os.path as osp

import numpy as np
import pytest
import yaml
from mmengine.config import Config

import restv2_mm  # noqa: F401
from restv2_mm.utils.config import config_scope
from restv2_mm.utils.flops import count_params, get_flops

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
METAFILE = osp.join(REPO, 'configs', 'metafile.yml')
PAPER_URL = 'https://arxiv.org/abs/2204.07366'
# The paper's numbers (facts: Tables 3, 4 and 5).
PAPER_RESULTS = {
    'mask_rcnn_restv2_t': {'box AP': 47.6, 'mask AP': 43.2},
    'mask_rcnn_restv2_s': {'box AP': 48.1, 'mask AP': 43.3},
    'mask_rcnn_restv2_b': {'box AP': 48.7, 'mask AP': 43.9},
    'mask_rcnn_restv2_t_win': {'box AP': 43.95, 'mask AP': 40.42},
    'mask_rcnn_restv2_t_cwin': {'box AP': 44.07, 'mask AP': 40.44},
    'mask_rcnn_restv2_t_hwin': {'box AP': 45.02, 'mask AP': 41.56},
    'upernet_restv2_t': {'mIoU(ms+flip)': 47.3},
    'upernet_restv2_s': {'mIoU(ms+flip)': 49.2},
    'upernet_restv2_b': {'mIoU(ms+flip)': 49.6},
}
FLOPS_REPRESENTATIVES = ['cascade_mask_rcnn_restv2_t', 'retinanet_restv2_t', 'upernet_restv2_t_win']


def load_metafile():
    with open(METAFILE) as f:
        return yaml.safe_load(f)


METAFILE_DATA = load_metafile()
MODELS = {m['Name']: m for m in METAFILE_DATA['Models']}


def build_model(config):
    cfg = Config.fromfile(osp.join(REPO, config))
    cfg.model.backbone.init_cfg = None  # no ImageNet file here; params do not depend on it
    if config_scope(cfg) == 'mmdet':
        from mmdet.registry import MODELS as REGISTRY
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS as REGISTRY
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    return REGISTRY.build(cfg.model)


def test_layout_is_mmdets_metafile_layout():
    assert set(METAFILE_DATA) == {'Collections', 'Models'}
    collections = {c['Name']: c for c in METAFILE_DATA['Collections']}
    assert len(collections) == len(METAFILE_DATA['Collections'])
    for collection in collections.values():
        assert collection['Paper'] == {'URL': PAPER_URL,
                                       'Title': 'ResT V2: Simpler, Faster and Stronger'}
        assert osp.isfile(osp.join(REPO, collection['Code']['URL']))
        assert collection['Code']['Version'] == 'v' + restv2_mm.__version__
        assert {'Training Data', 'Training Resources', 'Architecture'} <= set(
            collection['Metadata'])
    assert len(MODELS) == len(METAFILE_DATA['Models'])
    for name, model in MODELS.items():
        assert model['In Collection'] in collections
        assert model['Config'] == f'configs/{name}.py'
        meta = model['Metadata']
        assert {'Parameters', 'FLOPs', 'FLOPs (without attention matmuls)', 'Training Data',
                'Training Resources', 'Architecture'} <= set(meta), name
        assert ('Epochs' in meta) != ('Iterations' in meta), name
        assert 'Weights' not in model  # none are published for detection / segmentation


def test_every_config_is_listed():
    configs = {osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'configs', '*.py'))}
    zoo = {c for c in configs if '_tiny_' not in osp.basename(c)}  # quick starts stay out
    assert {m['Config'] for m in MODELS.values()} == zoo


def test_results_are_the_papers_and_only_the_papers():
    for name, model in MODELS.items():
        stated = {metric: value for result in model.get('Results', [])
                  for metric, value in result['Metrics'].items()}
        assert stated == PAPER_RESULTS.get(name, {}), name
        for result in model.get('Results', []):
            assert result['Dataset'] == model['Metadata']['Training Data']


@pytest.mark.parametrize('name', sorted(MODELS))
def test_config_builds_with_the_stated_params(name):
    meta = MODELS[name]['Metadata']
    params = count_params(build_model(MODELS[name]['Config']))
    assert abs(params - meta['Parameters']) <= 0.01 * meta['Parameters'], params


@pytest.mark.slow
@pytest.mark.parametrize('name', FLOPS_REPRESENTATIVES)
def test_stated_flops_match_get_flops(name):
    meta = MODELS[name]['Metadata']
    result = get_flops(osp.join(REPO, MODELS[name]['Config']), shape=meta['FLOPs Input Shape'])
    assert result['total'] == pytest.approx(meta['FLOPs'], rel=0.01)
    assert result['total_without_matmul'] == pytest.approx(
        meta['FLOPs (without attention matmuls)'], rel=0.01)


def test_det_inferencer_runs_our_configs(tmp_path):
    from mmdet.apis import DetInferencer
    # Builds the cascade (no weights: random init and COCO class names, as mmdet warns).
    cascade = DetInferencer(model=osp.join(REPO, 'configs/cascade_mask_rcnn_restv2_t.py'),
                            weights=None, device='cpu', show_progress=False)
    assert type(cascade.model).__name__ == 'CascadeRCNN'
    assert type(cascade.model.backbone).__name__ == 'ResTv2'
    # Runs the RetinaNet on an image (the config's test pipeline: resized to 1333x800).
    retinanet = DetInferencer(model=osp.join(REPO, 'configs/retinanet_restv2_t.py'),
                              weights=None, device='cpu', show_progress=False)
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    result = retinanet(image, pred_score_thr=0.0, no_save_vis=True, return_datasamples=True)
    instances = result['predictions'][0].pred_instances
    assert len(instances) > 0 and instances.bboxes.shape[1] == 4
    assert result['predictions'][0].img_shape == (800, 1067)


def test_mmseg_inferencer_runs_our_configs():
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=osp.join(REPO, 'configs/upernet_restv2_t_win.py'),
                                 weights=None, device='cpu')
    assert inferencer.model.backbone.attn_style == 'win'
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    result = inferencer(image, return_datasamples=True)
    assert tuple(result.pred_sem_seg.data.shape) == (1, 48, 64)
