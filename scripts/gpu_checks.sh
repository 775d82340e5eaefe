#!/usr/bin/env bash
# The GPU checks in one run: the opt-in CUDA tests, then the loss-path benchmark on the GPU at the CPU
# table's sizes (H=1024, fp32) and at Qwen3-8B's (H=4096, V=151936, SpecForge's 512 anchors; bf16 and
# fp32). Each step has its own time limit and writes its markdown and JSON into OUT_DIR as it goes (the
# benchmarks' output goes to bench.log, the tests' to tests.log), so a step that runs out of time loses
# only itself.
#
#   bash scripts/gpu_checks.sh [OUT_DIR]        (default ./gpu-checks; needs a CUDA build of torch)
#
# Environment: TEST_LIMIT_S and BENCH_LIMIT_S (seconds per step, default 120 and 150), REPS (timed
# repetitions, default 5).
set -uo pipefail
out=${1:-gpu-checks}
test_limit=${TEST_LIMIT_S:-120}
bench_limit=${BENCH_LIMIT_S:-150}
reps=${REPS:-5}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} >"$out/env.txt" 2>&1

timeout "$test_limit" python3 -m pytest -q -m gpu tests/fused/test_fused_gpu.py -p no:cacheprovider >"$out/tests.log" 2>&1
echo "gpu tests: rc=$?" >>"$out/env.txt"

bench() {  # name, then bench_loss_path.py arguments
  local name=$1
  shift
  timeout "$bench_limit" python3 scripts/bench_loss_path.py --device cuda --threads 8 --reps "$reps" \
    --json "$out/$name.json" --markdown "$out/$name.md" "$@" >>"$out/bench.log" 2>&1
  echo "$name: rc=$?" >>"$out/env.txt"
}

bench qwen3-8b-bf16 --sections fused,soft --hidden-size 4096 --vocab 151936 --blocks 512 --dtype bf16
bench cpu-table-sizes-fp32 --sections fused,soft --hidden-size 1024 --vocab 32000,151936 --blocks 32,128
bench qwen3-8b-fp32 --sections soft --hidden-size 4096 --vocab 151936 --blocks 512 --dtype fp32
cat "$out/env.txt"
