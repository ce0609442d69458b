#!/usr/bin/env bash
# Create .venv at the repo root and install the project (editable) with its test extras.
# Re-runs only when pyproject.toml changed since the last successful install (stamp in .venv/).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.sevila-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "==> installing into .venv (torch 2.13.0 CPU, transformers, prefect, mlflow, dvc, great-expectations, ...)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: a looser request pulls a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e '.[test]'
# torchvision/timm break every transformers model import on these machines (CUDA-only torchvision build).
if .venv/bin/python -m pip show torchvision >/dev/null 2>&1; then
  echo "torchvision is installed in .venv: remove it (pip uninstall torchvision), it breaks transformers here" >&2
  exit 1
fi
echo "$want" > "$stamp"
