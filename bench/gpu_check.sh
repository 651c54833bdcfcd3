#!/usr/bin/env bash
# One prepared GPU check (< 8 minutes on one H200): trains the blog-shaped recipe with offline backbones and prints
# images/s per stage, peak GPU memory and validation accuracy. Installs nothing from the network: run it where the
# venv exists, or carry wheels (see the device tool's notes) and install them with --no-index first.
# Usage: bash bench/gpu_check.sh [DATA_DIR] [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/guitars}
OUT=${2:-runs/gpu_check}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not found"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
rm -rf "$OUT"
start=$(date +%s)
"$PY" -m training train --data "$DATA" --recipe gpu_check --out "$OUT" --device cuda --no-progress
echo "wall seconds: $(( $(date +%s) - start ))"
"$PY" - "$OUT" <<'PYEOF'
import sys
from pathlib import Path
from training.runfiles import read_report
report = read_report(Path(sys.argv[1]))
train = report["dataset"]["train_images"]
for stage in report["stages"]:
    seconds = sum(row["seconds"] for row in stage["epochs"])
    print(f"{stage['stage']:<22} {stage['size']:>4}px  {train * len(stage['epochs']) / seconds:8.1f} img/s (incl. validation)"
          f"  accuracy {stage['epochs'][-1]['accuracy']:.4f}")
print(f"peak GPU memory {report['cuda_max_memory_gib']} GiB; final validation accuracy {report['validation']['accuracy']:.4f}, "
      f"macro-F1 {report['validation']['macro_f1']:.4f} on {report['validation']['n']} photos")
PYEOF
