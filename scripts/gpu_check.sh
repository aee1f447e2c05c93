#!/usr/bin/env bash
# The GPU check (export/gpu_check.py): parity of the served graphs on CUDA (and TensorRT FP16)
# against the CPU, and throughput, written to one JSON. Meant to end within 10 minutes.
#
#   scripts/gpu_check.sh [--install] [--wheelhouse DIR] [export.gpu_check options...]
#
#   --install         a GPU box with network: pip install the project with its GPU extras first
#                     (onnxruntime-gpu in place of onnxruntime; tensorrt for the FP16 profile)
#   --wheelhouse DIR  an offline box: install the wheels in DIR (no index, no dependencies) into
#                     a folder of their own, put first on PYTHONPATH; the rest is what is installed
# Everything else goes to `python -m export.gpu_check` (--dry-run, --deployment, --run, -o ...).
# PYTHON names the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
install=0
wheelhouse=""
args=()
while (($#)); do
    case "$1" in
        --install) install=1 ;;
        --wheelhouse) wheelhouse=${2:?--wheelhouse needs a folder}; shift ;;
        *) args+=("$1") ;;
    esac
    shift
done

if ((install)); then
    "$PYTHON" -m pip install -q -e ".[train,serve,test]"
    "$PYTHON" -m pip uninstall -q -y onnxruntime
    "$PYTHON" -m pip install -q ".[gpu]" tensorrt
fi
pythonpath=$PWD
if [[ -n $wheelhouse ]]; then
    site=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheelhouse"/*.whl
    pythonpath=$site:$pythonpath
fi
export PYTHONPATH=$pythonpath${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PYTHON" -m export.gpu_check ${args[@]+"${args[@]}"}
