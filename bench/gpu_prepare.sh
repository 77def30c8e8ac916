#!/usr/bin/env bash
# Run here, before a device run: puts into .gpucarry/ what the device tool's bare GPU machine
# lacks, for bench/gpu.sh to use there. The machine has no network and its Python (3.12, with
# torch, torchvision, numpy, pandas, pytest and matplotlib) lacks optuna and mlflow; the
# ../shared/datasets beside this checkout does not travel.
#
#   .gpucarry/wheels/    the packages below, for CPython 3.12 on x86-64 Linux, at the versions
#                        this .venv has (found enough to launch, sweep and register an ensemble
#                        in a venv holding only the GPU image's packages and these)
#   .gpucarry/datasets/  cifar10-jpeg.tar.gz
#
# .gpucarry/ is ignored through .git/info/exclude, so it travels only when carried:
#   device run: command "bash bench/gpu.sh", carry [".gpucarry"], timeout_s 560
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpucarry
NEEDED=(optuna alembic colorlog mako sqlalchemy mlflow mlflow-skinny mlflow-tracing
  opentelemetry-api opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions
  importlib-metadata cachetools sqlparse pydantic pydantic-core annotated-types typing-inspection
  fastapi starlette databricks-sdk cryptography cffi pycparser)
LIMIT_MB=60 # the device tool carries 64 MiB in all, the working tree included

grep -qxF "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >>.git/info/exclude
rm -rf "$CARRY"
mkdir -p "$CARRY/wheels" "$CARRY/datasets"
cp "${SWEEPER_DATA_DIR:-../shared/datasets}/cifar10-jpeg.tar.gz" "$CARRY/datasets/"

mapfile -t PINNED < <(.venv/bin/python -c '
import importlib.metadata as m, sys
for name in sys.argv[1:]:
    print(f"{name}=={m.version(name)}")' "${NEEDED[@]}")
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$CARRY/wheels" "${PINNED[@]}"

tree_mb=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | awk '{print int($1/1e6)}')
carry_mb=$(du -sb "$CARRY" | awk '{print int($1/1e6)}')
echo "$CARRY: $(ls "$CARRY/wheels" | wc -l) wheels + dataset, $carry_mb MB;" \
  "tracked files $tree_mb MB"
if ((carry_mb + tree_mb > LIMIT_MB)); then
  echo "gpu_prepare.sh: $((carry_mb + tree_mb)) MB is over $LIMIT_MB MB: carry less" >&2
  exit 1
fi
echo 'next: the device tool'"'"'s run with command "bash bench/gpu.sh", carry [".gpucarry"]'
