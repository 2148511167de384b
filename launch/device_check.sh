#!/usr/bin/env bash
# The accelerator check (issue 16), under 10 minutes on one GPU: train images/s of each
# CIFAR model (float32, bfloat16, fused), Inception V3's MFU at 299x299 in bfloat16, and the
# time of a paper-length inception_small CIFAR-10 run and of the whole figure1bc sweep,
# extrapolated from real epochs. rethinking/bench/device_check.py says how each is measured.
#
# Usage: launch/device_check.sh [--dry_run] [--tiny] [--json=FILE] [--<flag>=<value> ...]
#   launch/device_check.sh --json=device_check.json   # on the GPU host
#   launch/device_check.sh --tiny                      # any CPU, seconds: the code path only
#
# Other flags go to `python -m rethinking.bench.device_check` (--helpfull lists them).
# Environment: VENV (the Python environment to activate; default <repo>/.venv where it
# exists, else the `python` on PATH), GPU (exported as CUDA_VISIBLE_DEVICES when set),
# DRY_RUN=1 (as --dry_run: print the commands, run nothing).
set -euo pipefail
venv_given=${VENV:-}
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_args 0 "$@"
# The check runs where it is lent a machine: a named or the repo's environment when there
# is one, else whatever python is on PATH (a bare device host with jax installed).
if [[ -n $venv_given || -f $VENV/bin/activate ]]; then
  activate_env
elif ! command -v "$PYTHON" >/dev/null; then
  PYTHON=python3  # Images that only name it so.
fi
if [[ -n ${GPU:-} ]]; then
  run export "CUDA_VISIBLE_DEVICES=$GPU"
fi
run cd "$REPO_ROOT"
run_last "$PYTHON" -m rethinking.bench.device_check "${ARGS[@]}"
