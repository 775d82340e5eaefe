#!/usr/bin/env bash
# Train a Qwen3-8B DFlash drafter online with D-PACE (or any registered objective / composite),
# with the DFlash settings of SpecForge's recipe: block 16, 512 anchors, lr 6e-4, warm-up 0.04,
# grad clip 1.0, max length 3072, 6 epochs.
#
# Legacy SpecForge checkout (scripts/train_dflash.py under torchrun, the checkout's own trainer):
#   SPECFORGE_ROOT=/path/to/SpecForge bash examples/run_qwen3_8b_dpace_online.sh
# Unified runtime (pip specforge==0.2.0; an SGLang capture server and Mooncake already running):
#   SERVER_URL=http://127.0.0.1:30000 bash examples/run_qwen3_8b_dpace_online.sh
# Any objective:   LOSS_TYPE='dflash(gamma=10) + 0.3*first-error-focal + 40*chain' bash ...
# Dry run:         DRY_RUN=1 bash ...   (prints the legacy command or the unified YAML; trains nothing)
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" &>/dev/null && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

NUM_GPUS=${NUM_GPUS:-8}
SPECFORGE_ROOT=${SPECFORGE_ROOT:-}                      # set: legacy checkout; unset: unified runtime
TARGET_MODEL_PATH=${TARGET_MODEL_PATH:-Qwen/Qwen3-8B}
DRAFT_CONFIG_PATH=${DRAFT_CONFIG_PATH:-${SPECFORGE_ROOT:+$SPECFORGE_ROOT/configs/qwen3-8b-dflash.json}}
TRAIN_DATA_PATH=${TRAIN_DATA_PATH:-./cache/dataset/perfectblend_qwen3-8b_regen.jsonl}
OUTPUT_DIR=${OUTPUT_DIR:-./outputs/qwen3-8b-dpace}
CACHE_DIR=${CACHE_DIR:-./cache}
LOSS_TYPE=${LOSS_TYPE:-dpace}
DPACE_ALPHA=${DPACE_ALPHA:-0.5}
LOSS_OPTIONS=${LOSS_OPTIONS:-}                          # space-separated KEY=VALUE pairs
ATTENTION_BACKEND=${ATTENTION_BACKEND:-flex_attention}
SERVER_URL=${SERVER_URL:-http://127.0.0.1:30000}        # unified runtime: SGLang capture server
REPORT_TO=${REPORT_TO:-none}                            # e.g. wandb
WANDB_PROJECT=${WANDB_PROJECT:-dpace-qwen3-8b}
WANDB_NAME=${WANDB_NAME:-qwen3-8b-dpace}
DRY_RUN=${DRY_RUN:-0}
PYTHON=${PYTHON:-python}

args=(
    --target-model-path "$TARGET_MODEL_PATH"
    --target-model-backend sglang
    --train-data-path "$TRAIN_DATA_PATH"
    --output-dir "$OUTPUT_DIR"
    --cache-dir "$CACHE_DIR"
    --num-epochs 6
    --batch-size 4
    --learning-rate 6e-4
    --warmup-ratio 0.04
    --max-grad-norm 1.0
    --max-length 3072
    --chat-template qwen
    --attention-backend "$ATTENTION_BACKEND"
    --block-size 16
    --num-draft-layers 1
    --num-anchors 512
    --loss-type "$LOSS_TYPE"
    --dpace-alpha "$DPACE_ALPHA"
    --log-interval 50
    --save-interval 1000
)
if [[ -n "$DRAFT_CONFIG_PATH" ]]; then
    args+=(--draft-config-path "$DRAFT_CONFIG_PATH")
fi
for option in $LOSS_OPTIONS; do
    args+=(--loss-option "$option")
done
if [[ "$REPORT_TO" != none ]]; then
    args+=(--report-to "$REPORT_TO" --wandb-project "$WANDB_PROJECT" --wandb-name "$WANDB_NAME")
fi
if [[ "$DRY_RUN" == 1 ]]; then
    args+=(--dry-run)
fi

if [[ -n "$SPECFORGE_ROOT" ]]; then
    args+=(--specforge-root "$SPECFORGE_ROOT")
    export PYTHONPATH="$SPECFORGE_ROOT:${PYTHONPATH:-}"
    export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$CACHE_DIR/compiled_kernels}
    export SPECFORGE_DATA_NUM_PROC=${SPECFORGE_DATA_NUM_PROC:-32}
    if [[ "$DRY_RUN" == 1 ]]; then
        exec "$PYTHON" "$REPO_DIR/scripts/train_dflash.py" "${args[@]}"
    fi
    exec torchrun --standalone --nproc_per_node "$NUM_GPUS" "$REPO_DIR/scripts/train_dflash.py" "${args[@]}"
fi

exec "$PYTHON" -m specforge_dpace train-dflash --runtime unified --nproc-per-node "$NUM_GPUS" \
    --server-url "$SERVER_URL" "${args[@]}"
