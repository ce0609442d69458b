#!/usr/bin/env bash
# Set everything up on a fresh machine and run the main job: `dvc repro` on the embedded synthetic world.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install.sh
export HF_HUB_OFFLINE=1 GX_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PATH="$PWD/.venv/bin:$PATH"  # dvc.yaml stages call the `sevila` command
sevila repro "$@"  # dvc repro with every stage's MLflow run under one parent run
