#!/usr/bin/env bash
# Every GPU figure of issue 16 in one call on a lent H200 (see docs/model.md, "GPU check"):
#   device run:  bash benchmarks/h200_check.sh          (timeout_s 600; the step limits add up to 585 s, expected ~6 min)
# Writes logs and JSON under $OUT (or ./h200_out). Each step has its own timeout, so one failure or
# hang does not cost the others. Uses the machine's python3 (it holds PyTorch with CUDA).
set -u
OUT=${OUT:-$PWD/h200_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "=== $name: exit $?"; tail -n 40 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.log"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/env.log"
# 1. CUDA correctness: graphs, fused + grouped experts on the device, no host syncs (tiny models).
step cuda_tests 90 $PY -m pytest -q -p no:cacheprovider -k "cuda or device_preprocessing" tests/test_model_fusion.py \
  tests/test_model_units.py tests/test_policy.py tests/test_fast_preprocessing.py
# 2. Paper scale bf16, DriveMoE and Drive-pi0: eager vs agent (fused at load + CUDA graph) vs fast
#    (+ grouped experts + vision/router graphs), one model each, agreement vs eager and vs fp32 of the same weights, peaks.
step bench_bf16 180 $PY -m model bench --preset drivemoe-base drivepi0-base --dtypes bfloat16 \
  --paths eager agent fast --grouped-experts --graph-vision --fp32-reference --iters 20 --warmup 3 --json "$OUT/bench_bf16.json"
# 3. Paper scale fp32 DriveMoE, eager vs agent.
step bench_fp32 80 $PY -m model bench --preset drivemoe-base --dtypes float32 --paths eager agent \
  --iters 10 --warmup 2 --json "$OUT/bench_fp32.json"
# 4. GPU preprocessing (agent gpu_preprocessing): difference from the exact path and time per inference.
#    Carry the six sample JPEGs as .h200/ (docs/model.md) or it measures random frames.
step device_preprocessing 45 $PY benchmarks/device_preprocessing_check.py --device cuda --sample-frame "${SAMPLE_FRAME:-.h200}"
# 5. FlexAttention (compiled kernel with the tanh soft-cap) in the fast path.
step bench_flex 100 $PY -m model bench --preset drivemoe-base --dtypes bfloat16 --paths agent fast --grouped-experts \
  --attention flex --iters 20 --warmup 3 --json "$OUT/bench_flex.json"
# 6. The fast path with torch.compile (first call compiles; the last step, so a slow compile costs nothing else).
step bench_compile 90 $PY -m model bench --preset drivemoe-base --dtypes bfloat16 --paths fast --grouped-experts \
  --graph-vision --compile --iters 20 --warmup 2 --json "$OUT/bench_compile.json"
ls -la "$OUT"
