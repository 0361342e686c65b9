#!/usr/bin/env bash
# The prepared GPU check for a lent GPU machine (no network; under 8 minutes on one H100/H200):
#   bench/gpu_check.sh            # from the repository root, with editflow's dependencies installed
# 1. every path on CUDA with the tiny test models (fp16 and bf16, pipeline and sampler paths, micro-batch
#    1/4/8, the naive loop): a smoke test that fails on any path error in seconds;
# 2. python -m bench.bench_sd on SD 1.5-size random-weight models built from config (nothing downloaded):
#    fp16 and bf16, micro-batch 1/4/8 vs a naive diffusers loop, images/s, GPU-seconds per row,
#    peak memory and the fraction of the H100 bf16 ceiling. Any failing path exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: run python -m bench.bench_sd --tiny for the CPU smoke test instead"
print("device:", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0),
      "torch", torch.__version__, flush=True)
PY
timeout 120 "$PY" -m bench.bench_sd --tiny --skip-cpu --steps 4 --repeats 1 > /dev/null
echo "tiny smoke on CUDA: ok" >&2
timeout 360 "$PY" -m bench.bench_sd --skip-cpu --steps 30 --repeats 1
