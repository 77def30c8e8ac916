#!/usr/bin/env bash
# sweeper on one NVIDIA GPU (an H100 or H200), one command of at most 8 minutes: the CUDA tests
# (make test-gpu), throughput, trials per hour with packed trials, a short ResNet-9 sweep and its
# seed ensemble, as Markdown tables (on stdout; files under $OUT when set). bench/gpu.py holds
# the stages and their time budget; its flags pass through:
#
#   bash bench/gpu.sh [--budget S] [--only STAGE ...] [--sweep-timeout S] [--keep-going] [--write]
#
# Here it sets up what a bare GPU machine lacks: a Python (the project's .venv, else python3),
# PYTHONPATH for the uninstalled package, the packages carried as wheels in .gpucarry/wheels and
# the CIFAR-10 archive in .gpucarry/datasets (bench/gpu_prepare.sh puts both there beforehand).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

echo "== nvidia-smi -L"
nvidia-smi -L || echo "gpu.sh: nvidia-smi -L failed: no NVIDIA driver here? (preflight will say)"

PY=${PYTHON:-}
if [[ -z $PY && -x .venv/bin/python ]]; then PY=$REPO/.venv/bin/python; fi
if [[ -z $PY ]]; then PY=$(command -v python3 || true); fi
[[ -n $PY ]] || { echo "gpu.sh: no Python here (set PYTHON=...)" >&2; exit 2; }
if compgen -G ".gpucarry/wheels/*.whl" >/dev/null; then
  SITE=/tmp/sweeper-gpu-site
  echo "== installing $(ls .gpucarry/wheels/*.whl | wc -l) carried wheels into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .gpucarry/wheels/*.whl
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}  # sweeper, installed or not

if [[ -z ${SWEEPER_DATA_DIR:-} ]]; then
  for dir in ../shared/datasets .gpucarry/datasets; do
    if [[ -f $dir/cifar10-jpeg.tar.gz ]]; then SWEEPER_DATA_DIR=$(cd "$dir" && pwd); break; fi
  done
fi
if [[ -z ${SWEEPER_DATA_DIR:-} ]]; then
  echo "gpu.sh: no cifar10-jpeg.tar.gz in ../shared/datasets or .gpucarry/datasets;" \
    "set SWEEPER_DATA_DIR or run bench/gpu_prepare.sh first" >&2
  exit 2
fi
export SWEEPER_DATA_DIR
# one decode cache for the tests and the stages (tests_gpu/ defaults to the same folder)
export SWEEPER_CACHE_DIR=${SWEEPER_CACHE_DIR:-$REPO/.pytest_cache/sweeper-data}
export PYTHONUNBUFFERED=1

exec "$PY" bench/gpu.py "$@"
