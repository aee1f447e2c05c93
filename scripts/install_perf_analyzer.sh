#!/usr/bin/env bash
# Installs Triton's perf_analyzer 2.51 (the server's version) into its own venv, runnable on a
# machine without CUDA.
#
#   scripts/install_perf_analyzer.sh [PROJECT_PYTHON]    (default: .venv/bin/python)
#
# perf_analyzer is not on PyPI by itself: the tritonclient==2.51.0 wheel bundles it as
# bin/perf_analyzer. It needs libcudart.so.12 and libb64.so.0d, which the nvidia-pytriton wheel
# (the project's `serve` extra) ships under hashed names; they are linked under their own names
# into .venv-perf/lib/perf_analyzer, and the launcher .venv-perf/bin/perf_analyzer_local runs
# perf_analyzer with that folder on LD_LIBRARY_PATH. The venv is its own so that the project
# keeps a current tritonclient. PERF_VENV overrides the venv's folder.
set -euo pipefail

project_python=${1:-.venv/bin/python}
venv=${PERF_VENV:-.venv-perf}

if [[ ! -x $project_python ]]; then
    echo "error: no Python at $project_python: create the project's venv first (make install), or name" \
         "the Python of a venv that has nvidia-pytriton" >&2
    exit 2
fi
pytriton_libs=$("$project_python" - <<'PY'
import importlib.util
from pathlib import Path

spec = importlib.util.find_spec("pytriton")
print(Path(next(iter(spec.submodule_search_locations))).parent / "nvidia_pytriton.libs" if spec else "")
PY
)
if [[ -z $pytriton_libs || ! -d $pytriton_libs ]]; then
    echo "error: $project_python has no nvidia-pytriton (whose libraries perf_analyzer borrows):" \
         "$project_python -m pip install nvidia-pytriton==0.7.0" >&2
    exit 2
fi

python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q tritonclient==2.51.0

libs="$venv/lib/perf_analyzer"
mkdir -p "$libs"
for wanted in libcudart.so.12 libb64.so.0d; do
    stem=${wanted%%.so*}
    found=$(find "$pytriton_libs" -maxdepth 1 -name "$stem-*.so.${wanted#*.so.}*" | head -n 1)
    if [[ -z $found ]]; then
        echo "error: no $wanted (as $stem-*.so.${wanted#*.so.}*) in $pytriton_libs" >&2
        exit 2
    fi
    ln -sf "$found" "$libs/$wanted"
done

launcher="$venv/bin/perf_analyzer_local"
cat > "$launcher" <<LAUNCHER
#!/usr/bin/env bash
# perf_analyzer 2.51 with the shared libraries it needs (written by scripts/install_perf_analyzer.sh)
LD_LIBRARY_PATH="$(cd "$libs" && pwd)\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$(cd "$venv/bin" && pwd)/perf_analyzer" "\$@"
LAUNCHER
chmod +x "$launcher"
"$launcher" --version >/dev/null || {
    echo "error: $launcher does not start; run it to see why" >&2
    exit 2
}
echo "$(cd "$venv/bin" && pwd)/perf_analyzer_local"
