#!/usr/bin/env bash
# benchmarks/gpu.py on the lent GPU machine (its python3 has torch, no network): installs
# the wheels carried in .whl (made here by benchmarks/device_wheels.py), then runs the
# benchmark; the table (gpu-results.md), its numbers (.json) and the log go to $OUT.
#   run: command "bash benchmarks/gpu_device.sh", carry [".whl"], timeout_s 540
set -euo pipefail
: "${OUT:?set OUT to the folder the results go to}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD/src:$PWD/benchmarks" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu-smi.txt"
python3 -c 'import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)'
python3 benchmarks/gpu.py --out "$OUT/gpu-results.md" 2>&1 | tee "$OUT/gpu-log.txt"
