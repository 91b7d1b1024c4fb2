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
# Usage: bash tools/setup_env.sh        (PYTHON=python3.11 bash tools/setup_env.sh to pick one)
set -euo pipefail
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PIP="$PYTHON -m pip install --disable-pip-version-check"

$PIP "numpy>=1.24,<3" torch==2.13.0 "mmengine>=0.10.5,<0.11"
$PIP "setuptools<70" wheel
if ! $PYTHON -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
    echo "[setup] building mmcv 2.1.0 with CPU ops (first time only, ~11 minutes on 2 cores)"
    MMCV_WITH_OPS=1 FORCE_CUDA=0 $PIP --no-build-isolation mmcv==2.1.0
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
