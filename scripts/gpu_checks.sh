#!/usr/bin/env bash
# The GPU checks in one run, most important first, each step under its own time limit and all of them
# under one overall budget (a lent GPU comes with about 15 minutes of device time, start-up included):
#
#   1. kernels   the Triton kernels compiled and checked against PyTorch on CUDA tensors
#                (tests/fused/test_kernels.py; the first compilations of the run happen here);
#   2. target    the loss-path benchmark at issue 22's sizes -- H=4096, V=151936 (Qwen3-8B), 512 anchors x 16
#                slots, bf16 -- hard (fused section: upstream, fused, PyTorch's F.linear_cross_entropy where
#                torch has it) and soft (soft section: plain and fused paths, Liger's and speculators'
#                kernels where importable), kernels on (the default on CUDA);
#   3. gpu-tests the opt-in CUDA tests (tests/fused/test_fused_gpu.py -m gpu: kernels = PyTorch on the GPU,
#                fused = plain, CUDA = CPU in fp64, bf16 buffers, a real OnlineDFlashModel trains);
#   4. control   step 2 with the kernels off (PyTorch element-wise code: the before/after pair, same run);
#   5. cpu-sizes the CPU table's sizes (H=1024, fp32, V in {32000, 151936}, N in {32, 128}), kernels on.
#
#   bash scripts/gpu_checks.sh [OUT_DIR]     (default ./gpu-checks; needs a CUDA build of torch, Triton and
#                                             SpecForge 0.2.0 installed, e.g. pip install --no-deps)
#
# Every step writes its markdown and JSON into OUT_DIR as it goes (benchmark output in bench.log, tests in
# tests.log, one status line a step in env.txt), so a step that runs out of time loses only itself.
# Environment: STEPS (comma-separated subset, default all five in order), TOTAL_LIMIT_S (overall budget,
# default 660), KERNEL_TEST_LIMIT_S (120), BENCH_LIMIT_S (150), TEST_LIMIT_S (210), REPS (5).
set -uo pipefail
out=${1:-gpu-checks}
steps=${STEPS:-kernels,target,gpu-tests,control,cpu-sizes}
total=${TOTAL_LIMIT_S:-660}
reps=${REPS:-5}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
start=$(date +%s)

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python3 - <<'EOF' 2>&1
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
for name in ("triton", "specforge", "liger_kernel", "speculators"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "installed"))
    except Exception as exc:
        print(name, "not importable:", type(exc).__name__, exc)
EOF
} >"$out/env.txt" 2>&1

limit() {  # a step's limit: its own, capped by what is left of the overall budget
  local left=$((total - ($(date +%s) - start)))
  ((left < $1)) && echo "$left" || echo "$1"
}

run() {  # name, own limit, command...
  local name=$1 own=$2
  shift 2
  [[ ",$steps," == *",$name,"* ]] || return 0
  local seconds
  seconds=$(limit "$own")
  if ((seconds < 20)); then
    echo "$name: skipped, overall budget spent" >>"$out/env.txt"
    return 0
  fi
  local t0=$(date +%s)
  timeout "$seconds" "$@"
  echo "$name: rc=$? in $(($(date +%s) - t0)) s (limit $seconds s)" >>"$out/env.txt"
}

bench=(python3 scripts/bench_loss_path.py --device cuda --threads 8 --reps "$reps" --warmup 1)
files() { echo --json "$out/$1.json" --markdown "$out/$1.md"; }
target=(--sections fused,soft --hidden-size 4096 --vocab 151936 --blocks 512 --dtype bf16)

run kernels "${KERNEL_TEST_LIMIT_S:-120}" \
  python3 -m pytest -q tests/fused/test_kernels.py -p no:cacheprovider >"$out/kernel-tests.log" 2>&1
run target "${BENCH_LIMIT_S:-150}" "${bench[@]}" $(files qwen3-8b-bf16-kernels) "${target[@]}" >>"$out/bench.log" 2>&1
run gpu-tests "${TEST_LIMIT_S:-210}" \
  python3 -m pytest -q -m gpu tests/fused/test_fused_gpu.py -p no:cacheprovider >"$out/tests.log" 2>&1
run control "${BENCH_LIMIT_S:-150}" "${bench[@]}" $(files qwen3-8b-bf16-pytorch) "${target[@]}" --kernels off \
  --no-anchors >>"$out/bench.log" 2>&1
run cpu-sizes "${BENCH_LIMIT_S:-150}" "${bench[@]}" $(files cpu-table-sizes-fp32-kernels) --sections fused,soft \
  --hidden-size 1024 --vocab 32000,151936 --blocks 32,128 --no-anchors >>"$out/bench.log" 2>&1
echo "total: $(($(date +%s) - start)) s of $total s" >>"$out/env.txt"
cat "$out/env.txt"
