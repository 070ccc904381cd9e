#!/usr/bin/env bash
# Builds .venv-bench: nnU-Net v2 (the peer) beside tumorfm, in an environment of its own.
# nnU-Net pulls torchvision, which fails to import beside the CPU torch 2.13.0 wheel, so this
# environment takes torch 2.14.1 + torchvision 0.29.1 (a CUDA build that runs on the CPU) and pins
# them with a constraint file so pip never swaps them out.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_BENCH:-.venv-bench}
TORCH_BENCH=${TORCH_BENCH:-torch==2.14.1}
TORCHVISION_BENCH=${TORCHVISION_BENCH:-torchvision==0.29.1}
if [ -f "$VENV/.done" ]; then exit 0; fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$TORCH_BENCH" "$TORCHVISION_BENCH"
constraints=$(mktemp)
"$VENV/bin/python" -m pip freeze | grep -iE '^(torch|torchvision)==' > "$constraints"
"$VENV/bin/python" -m pip install --quiet -c "$constraints" nnunetv2
"$VENV/bin/python" -m pip install --quiet -c "$constraints" -e ".[dev]"
rm -f "$constraints"
touch "$VENV/.done"
