# Shared helpers of the wrapper scripts: locate the CLI.
mtt_cli() {
  local here
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [ -x "$here/.venv/bin/marl-two-tower" ]; then
    "$here/.venv/bin/marl-two-tower" "$@"
  elif command -v marl-two-tower >/dev/null 2>&1; then
    marl-two-tower "$@"
  else
    PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" python3 -m marl_two_tower.cli "$@"
  fi
}

# --gpus value -> device / process count. "" or "cpu" or "-1" = CPU; "0" = cuda:0
# (falls back to CPU with a warning when CUDA is absent); "0,1" = 2 processes.
gpus_to_args() {
  local g="$1"
  case "$g" in
    ""|cpu|-1) echo "--device cpu" ;;
    *,*) echo "--nproc $(echo "$g" | tr ',' '\n' | wc -l) --device cuda" ;;
    *) echo "--device cuda:$g" ;;
  esac
}
