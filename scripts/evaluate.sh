#!/usr/bin/env bash
# Evaluate a checkpoint with the flags of the original project.
#   bash scripts/evaluate.sh -c movielens.yaml -p checkpoints/model_best.pt -m comprehensive -g 0
# Flags: -c CONFIG  -p CHECKPOINT  -m comprehensive|quick|fairness|agents|inference
#        -g GPU  -b BATCH_SIZE  -s SEED  -o OUTPUT_DIR  -f json|csv|both
#        --statistical-test [BASELINE_CHECKPOINT]  --set KEY=VALUE
set -euo pipefail
source "$(dirname "$0")/_common.sh"

args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -c|--config) args+=(--config "$2"); shift 2 ;;
    -p|--checkpoint) args+=(--checkpoint "$2"); shift 2 ;;
    -m|--mode) args+=(--mode "$2"); shift 2 ;;
    -g|--gpus) if [ "$2" = cpu ] || [ "$2" = -1 ]; then args+=(--device cpu); else args+=(--device "cuda:$2"); fi; shift 2 ;;
    -b|--batch-size) args+=(--set "eval.batch_size=$2"); shift 2 ;;
    -s|--seed) args+=(--set "eval.sampled_seed=$2"); shift 2 ;;
    -o|--output) args+=(--output "$2"); shift 2 ;;
    -f|--format) args+=(--format "$2"); shift 2 ;;
    --statistical-test)
      if [ $# -gt 1 ] && [ "${2#-}" = "$2" ]; then args+=(--statistical-test "$2"); shift 2
      else args+=(--statistical-test ""); shift; fi ;;
    --set) args+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "evaluate.sh: unknown flag '$1' (see --help)" >&2; exit 2 ;;
  esac
done
mtt_cli evaluate "${args[@]}"
