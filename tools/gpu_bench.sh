#!/usr/bin/env bash
# The GPU figures of docs/performance.md: both presets, ours and the original (PyTorch, on the
# same GPU through tools/torch_cuda.py) side by side, then where our train step's time goes.
#   NDX7_SRC=<the original's extracted source> tools/gpu_bench.sh TIMER [OUTDIR]
# TIMER is ../shared/bench/torch_original.py; python3 needs jax (CUDA), torch, mido, bitstruct.
set -uo pipefail
timer=$1 out=${2:-/tmp/neuraldx7-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# One compilation per program across the runs below (timings are taken after warm-up anyway).
export JAX_COMPILATION_CACHE_DIR=/tmp/neuraldx7-jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
compare() {  # name, seconds, then compare_original.py flags
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" python3 tools/compare_original.py --torch-python python3 --timer "$timer" --torch-cuda "$@" \
    > "$out/$name.txt" 2>&1
  tail -n 5 "$out/$name.txt"
}
compare small 150 --config small --batch 32 --sample-batch 1024
compare original 200 --config original --batch 16 --sample-batch 1024
compare original_b256 120 --config original --batch 256 --what train --torch-steps 10
echo "== profile: original, batch 16 and 256"
for b in 16 256; do
  timeout 80 python3 tools/profile_train.py --config original --batch $b --steps 5 \
    --trace-dir "/tmp/trace$b" 2>&1 | tee "$out/profile_b$b.txt" | head -n 14
  cp "$(ls /tmp/trace$b/plugins/profile/*/*.json.gz | tail -n 1)" "$out/trace_b$b.json.gz"
done
