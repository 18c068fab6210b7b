#!/usr/bin/env bash
# Train (or run the ablation study) with the flags of the original project.
#   bash scripts/run_training.sh --config movielens.yaml --mode full --gpus 0 --epochs 100 --batch-size 256
# Flags: --config FILE  --mode full|baseline|ablation  --gpus IDS  --epochs N
#        --batch-size N  --lr X  --seed N  --name NAME  --resume  --mixed-precision [bf16|fp16]
#        --ablation-study  --seeds N  --no-fair-sampling  --no-buhs  --no-gini-agent
#        --no-marl  --no-context-gnn  --no-tail-loss  --no-exposure-budget
#        --max-steps N (smoke run: at most N steps per epoch = train.max_steps_per_epoch)
#        --set KEY=VALUE (repeatable)
#        (ablation: the study always resumes; --name NAME = study folder runs/NAME)
# Checkpoints: checkpoints/<name>/ per run; checkpoints/model_best.pt = the latest run's best.
set -euo pipefail
source "$(dirname "$0")/_common.sh"

cmd=train
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config|-c) args+=(--config "$2"); shift 2 ;;
    --mode)
      case "$2" in
        ablation) cmd=ablate ;;
        full|baseline) args+=(--mode "$2") ;;
        *) echo "run_training.sh: --mode must be full, baseline or ablation (got '$2')" >&2; exit 2 ;;
      esac
      shift 2 ;;
    --ablation-study) cmd=ablate; shift ;;
    --gpus) read -r -a g <<<"$(gpus_to_args "$2")"; args+=("${g[@]}"); shift 2 ;;
    --epochs) args+=(--epochs "$2"); shift 2 ;;
    --batch-size) args+=(--batch-size "$2"); shift 2 ;;
    --lr) args+=(--lr "$2"); shift 2 ;;
    --seed) args+=(--seed "$2"); shift 2 ;;
    --seeds) args+=(--seeds "$2"); shift 2 ;;
    --max-steps) args+=(--set "train.max_steps_per_epoch=$2"); shift 2 ;;
    --name) args+=(--name "$2"); shift 2 ;;
    --resume) args+=(--resume); shift ;;
    --mixed-precision)
      if [ $# -gt 1 ] && [[ "$2" =~ ^(bf16|fp16|none)$ ]]; then args+=(--mixed-precision "$2"); shift 2
      else args+=(--mixed-precision bf16); shift; fi ;;
    --no-fair-sampling|--no-buhs|--no-gini-agent|--no-marl|--no-context-gnn|--no-tail-loss\
    |--no-exposure-budget)
      args+=("$1"); shift ;;
    --set) args+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "run_training.sh: unknown flag '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$cmd" = ablate ]; then
  # the study runs its own fixed variants and always resumes: drop the per-run --mode
  # and --resume; --name NAME names the study folder (runs/NAME), whose runs are
  # <variant>/seed<S>
  filtered=(); skip=0; prev=""
  for a in "${args[@]}"; do
    if [ $skip = 1 ]; then
      skip=0
      if [ "$prev" = --name ]; then filtered+=(--output-dir "runs/$a"); fi
      continue
    fi
    case "$a" in
      --mode|--name) skip=1; prev="$a"; continue ;;
      --resume) continue ;;
    esac
    filtered+=("$a")
  done
  args=("${filtered[@]}")
fi
mtt_cli "$cmd" "${args[@]}"
