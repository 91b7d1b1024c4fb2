#!/usr/bin/env bash
# The GPU check (docs/gpu.md): on a machine with one CUDA GPU, set up what is missing, then run
# the cuda tests, the quick-start detector's 20 epochs and the CUDA benchmark inside a time
# budget; writes OUT/gpu_check.json, OUT/gpu_check.md and OUT/gpu_check.log.
#
#   bash tools/gpu_check.sh [--wheels DIR] [--keep-wheel DIR] [--out DIR] [--budget SECONDS]
#                           [--only STEP...] [--skip STEP...] [--dry-run]
#
# Set-up, only when `import mmcv.ops, mmdet, mmseg, pycocotools` fails:
#   --wheels DIR   offline, from wheels in DIR (the GPU machine reaches no package index):
#                  `bash tools/gpu_check.sh --download-wheels DIR` on a machine that does
#                  fetches them for PYTHON_VERSION (default 3.12) with mmcv's source; mmcv is
#                  then built here with CPU ops (2 to 3 minutes on 16 cores) unless DIR holds an
#                  mmcv wheel for this interpreter and torch (--keep-wheel DIR copies the one
#                  built here to DIR, for the next machine).
#   otherwise      RESTV2_CUDA=1 bash tools/setup_env.sh (needs a package index).
# PYTHON picks the interpreter (default python3). Everything after set-up is
# `python -m restv2_mm.gpu_check`, whose --help lists the steps.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
START=$(date +%s)
# Wheels for the GPU machine's interpreter; mmengine's opencv-python requirement is left out on
# purpose (--no-deps): the image's opencv-python-headless provides cv2.
PACKAGES=(mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 addict yapf platformdirs termcolor
          terminaltables prettytable ftfy pycocotools shapely wcwidth)

WHEELS="" KEEP_WHEEL="" DOWNLOAD="" DRY_RUN=0
ARGS=()
while [ $# -gt 0 ]; do
    case $1 in
        --wheels) WHEELS=$(cd "$2" && pwd); shift 2 ;;
        --keep-wheel) KEEP_WHEEL=$2; shift 2 ;;
        --download-wheels) DOWNLOAD=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; ARGS+=("$1"); shift ;;
        *) ARGS+=("$1"); shift ;;
    esac
done

if [ -n "$DOWNLOAD" ]; then
    PY=${PYTHON_VERSION:-3.12}
    mkdir -p "$DOWNLOAD"
    PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
               --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    for wheel in "${PACKAGES[@]}" "setuptools<70"; do
        $PYTHON -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" \
            --implementation cp "${PLATFORMS[@]}" -d "$DOWNLOAD" "$wheel"
    done
    $PYTHON -m pip download -q --no-deps --no-binary=:all: -d "$DOWNLOAD" mmcv==2.1.0
    echo "[gpu_check] wheels for Python $PY and mmcv's source in $DOWNLOAD:"
    ls "$DOWNLOAD"
    exit 0
fi

installed() {  # without importing them (seconds): mmcv._ext is mmcv's compiled ops
    $PYTHON -c "import sys, importlib.util as u
sys.exit(not all(u.find_spec(m) for m in ('pkg_resources', 'mmcv._ext', 'mmdet', 'mmseg', 'pycocotools')))" 2>/dev/null
}

offline_setup() {
    local dir=$1
    local pip="$PYTHON -m pip install -q --no-index --no-deps --find-links $dir --disable-pip-version-check"
    $PYTHON -c "import pkg_resources" 2>/dev/null || $pip "setuptools<70"
    $pip "${PACKAGES[@]}"
    if ! $PYTHON -c "import mmcv.ops" 2>/dev/null; then
        if ! $pip --only-binary=:all: mmcv==2.1.0 2>/dev/null; then
            echo "[gpu_check] building mmcv 2.1.0 with CPU ops ($(nproc) jobs)"
            # mmcv's setup.py compiles CUDA ops whenever torch sees a GPU: hide it.
            local built
            built=$(mktemp -d)
            CUDA_VISIBLE_DEVICES= MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=$(nproc) \
                $PYTHON -m pip wheel -q --no-index --no-deps --no-build-isolation -w "$built" \
                "$dir"/mmcv-2.1.0.tar.gz
            $pip "$built"/mmcv-2.1.0-*.whl
            if [ -n "$KEEP_WHEEL" ]; then mkdir -p "$KEEP_WHEEL" && cp "$built"/*.whl "$KEEP_WHEEL"/; fi
        fi
    fi
}

if ! installed; then
    if [ "$DRY_RUN" = 1 ]; then
        echo "[gpu_check] --dry-run: mmcv / mmdet / mmseg / pycocotools are not importable; set up first" >&2
        exit 1
    elif [ -n "$WHEELS" ]; then
        offline_setup "$WHEELS"
    else
        RESTV2_CUDA=1 PYTHON=$PYTHON bash "$ROOT/tools/setup_env.sh"
    fi
    installed || { echo "[gpu_check] set-up did not install mmcv's ops, mmdet, mmseg, pycocotools" >&2; exit 1; }
fi
SETUP_S=$(( $(date +%s) - START ))
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m restv2_mm.gpu_check --setup-seconds "$SETUP_S" "${ARGS[@]}"
