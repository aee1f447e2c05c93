#!/usr/bin/env bash
# The GPU check (export/gpu_check.py): parity of the served graphs on CUDA (and TensorRT FP16)
# against the CPU, and throughput, written to one JSON. Meant to end within 10 minutes.
#
#   scripts/gpu_check.sh [--install] [--wheelhouse DIR] [export.gpu_check options...]
#
#   --install         a GPU box with network: pip install the project with its GPU extras first
#                     (onnxruntime-gpu in place of onnxruntime; tensorrt for the FP16 profile;
#                     faiss-gpu is not needed here)
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
    "$PYTHON" -m pip install -q -c constraints.txt -e ".[train,serve,test]"
    "$PYTHON" -m pip uninstall -q -y onnxruntime
    "$PYTHON" -m pip install -q -c constraints.txt onnxruntime-gpu tensorrt
fi
pythonpath=$PWD
if [[ -n $wheelhouse ]]; then
    site=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheelhouse"/*.whl
    pythonpath=$site:$pythonpath
fi
export PYTHONPATH=$pythonpath${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

# what the check imports, by the name pip installs it under (torch, tritonclient and
# nvidia-pytriton are optional: the entries that need them say why they did not run)
missing=$("$PYTHON" - <<'PY'
import importlib.util
needs = {"numpy": "numpy", "onnxruntime": "onnxruntime-gpu", "onnx": "onnx", "tokenizers": "tokenizers",
         "PIL": "pillow", "cv2": "opencv-python-headless", "urllib3": "urllib3", "tqdm": "tqdm",
         "faiss": "faiss-cpu", "rapidocr": "rapidocr==3.10.0 (and its needs: pyclipper shapely omegaconf)"}
print(", ".join(pip for module, pip in needs.items() if importlib.util.find_spec(module) is None))
PY
)
if [[ -n $missing ]]; then
    echo "gpu_check.sh: not installed: $missing. Install them (--install), or put their wheels in a folder" \
         "and pass --wheelhouse DIR." >&2
    exit 2
fi
exec "$PYTHON" -m export.gpu_check ${args[@]+"${args[@]}"}
