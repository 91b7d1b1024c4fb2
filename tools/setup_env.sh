#!/usr/bin/env bash
# One-command set-up for restv2-mm on a CPU machine (Python 3.11).
#
# Installs, in the order the mmcv source build needs them:
#   numpy and torch==2.13.0 (pinned: an unpinned torch pulls several GB of CUDA wheels), then
#   setuptools<70 (mmcv's setup.py imports pkg_resources; pip warns that torch asks for a newer
#   one, which only its C++-extension builder uses), then mmcv==2.1.0 built from source with its
#   CPU ops (~11 min on 2 cores the first time; pip caches the built wheel), then mmengine,
#   mmdet 3.3.0, mmsegmentation 1.2.2 (+ ftfy, regex), onnx + onnxruntime (deployment),
#   test/figure deps and this package (editable).
#
# On a CUDA machine: RESTV2_CUDA=1 bash tools/setup_env.sh. What differs (docs/gpu.md):
#   torch==2.13.0 and torchvision==0.28.0 from the index in TORCH_INDEX_URL (e.g.
#   https://download.pytorch.org/whl/cu128; unset: pip's default index, whose Linux torch wheels
#   are CUDA builds). mmcv is built with CPU ops as on a CPU machine, with the GPU hidden from the
#   build (mmcv's setup.py compiles CUDA ops whenever torch sees a GPU, FORCE_CUDA=0 or not);
#   Mask R-CNN's NMS and RoIAlign on CUDA tensors then run torchvision's kernels
#   (restv2_mm/utils/mmcv_cuda.py). RESTV2_MMCV_CUDA=1 builds mmcv's own CUDA ops instead
#   (FORCE_CUDA=1, needs nvcc of torch's CUDA version; much longer). Without RESTV2_CUDA=1
#   nothing here changes.
#
# Usage: bash tools/setup_env.sh        (PYTHON=python3.11 bash tools/setup_env.sh to pick one)
set -euo pipefail
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PIP="$PYTHON -m pip install --disable-pip-version-check"
CUDA=${RESTV2_CUDA:-0}
MMCV_CUDA=${RESTV2_MMCV_CUDA:-0}

if [ "$CUDA" = 1 ]; then
    # pip counts an installed CPU build of the same version (2.13.0+cpu) as torch==2.13.0.
    REPLACE=$($PYTHON -c "import torch; print('' if torch.version.cuda else '--force-reinstall')" 2>/dev/null || true)
    $PIP $REPLACE ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0 torchvision==0.28.0
    $PIP "numpy>=1.24,<3" "mmengine>=0.10.5,<0.11"
else
    $PIP "numpy>=1.24,<3" torch==2.13.0 "mmengine>=0.10.5,<0.11"
fi
$PIP "setuptools<70" wheel
if [ "$CUDA" = 1 ] && [ "$MMCV_CUDA" = 1 ]; then
    if ! $PYTHON -c "import mmcv; from mmcv.ops import get_compiling_cuda_version as v; assert mmcv.__version__ == '2.1.0' and v() != 'not available'" 2>/dev/null; then
        echo "[setup] building mmcv 2.1.0 with CUDA ops (tens of minutes)"
        # --no-cache-dir: a cached CPU-op wheel of the same version would be reused otherwise.
        MMCV_WITH_OPS=1 FORCE_CUDA=1 $PIP --no-build-isolation --no-cache-dir --force-reinstall \
            --no-deps mmcv==2.1.0
    fi
elif ! $PYTHON -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
    echo "[setup] building mmcv 2.1.0 with CPU ops (first time only, ~11 minutes on 2 cores)"
    if [ "$CUDA" = 1 ]; then
        CUDA_VISIBLE_DEVICES= MMCV_WITH_OPS=1 FORCE_CUDA=0 $PIP --no-build-isolation mmcv==2.1.0
    else
        MMCV_WITH_OPS=1 FORCE_CUDA=0 $PIP --no-build-isolation mmcv==2.1.0
    fi
fi
$PIP mmdet==3.3.0 mmsegmentation==1.2.2 ftfy regex
# ONNX export and its ONNX Runtime check (tools/deployment/export_onnx.py): Python 3.11 wheels
# that work with numpy 2; the TorchScript exporter needs no onnxscript.
$PIP onnx==1.23.2 onnxruntime==1.32.0
$PIP --no-build-isolation -e "$ROOT[tests]"
# Last, because resolving torch's requirements above pulls setuptools>=77 back in, and those no
# longer ship pkg_resources, which mmengine's `mmdet::`/`mmseg::` config inheritance imports.
$PIP "setuptools<70"
$PYTHON - <<'PY'
import pkg_resources  # noqa: F401  (mmengine resolves `mmdet::` configs with it)
import torch, mmcv, mmengine, mmdet, mmseg, restv2_mm
from mmcv.ops import RoIAlign  # noqa: F401  (fails if mmcv was built without ops)
import onnx, onnxruntime  # noqa: F401,E401  (tools/deployment/export_onnx.py)
print(f'[setup] ok: torch {torch.__version__}, mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, '
      f'mmdet {mmdet.__version__}, mmseg {mmseg.__version__}')
PY
if [ "$CUDA" = 1 ]; then
    $PYTHON - <<'PY'
import torch
import torchvision  # noqa: F401  (NMS / RoIAlign on CUDA with an mmcv of CPU ops)
from restv2_mm.utils.mmcv_cuda import mmcv_has_cuda_ops
print(f'[setup] CUDA: torch sees {torch.cuda.device_count()} GPU(s) (CUDA {torch.version.cuda}); '
      f"NMS / RoIAlign on CUDA by {'mmcv' if mmcv_has_cuda_ops() else 'torchvision'}")
PY
fi
