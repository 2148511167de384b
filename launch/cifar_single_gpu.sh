#!/usr/bin/env bash
# One CIFAR-10 run on one GPU: Table 1, Figures 1-2.
#
# Usage: launch/cifar_single_gpu.sh [--dry_run] <config-arg> <workdir> [--config.<field>=<value> ...]
#   launch/cifar_single_gpu.sh model=inception_small,corruption=random_labels runs/inception_random
#   launch/cifar_single_gpu.sh model=alexnet_small,p=0.3,fit runs/alexnet_p03 --config.seed=1
#
# <config-arg> is a preset of configs/cifar10.py (its docstring lists every Table 1 row and
# Figure 1-2 setting). The same command on the same workdir resumes the run; exit code 75
# means it stopped on SIGTERM/SIGINT after saving a checkpoint: run it again to continue.
#
# Environment: GPU (default 0; exported as CUDA_VISIBLE_DEVICES), VENV (the Python
# environment to activate; default <repo>/.venv), RETHINKING_EXPECT_PLATFORM (default gpu:
# a jax without a GPU stops at once; 'any' runs on the CPU too), DRY_RUN=1 (as --dry_run:
# print the commands, run nothing).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_args 2 "$@"
main_command configs/cifar10.py "${ARGS[0]}" "$(absolute "${ARGS[1]}")" "${ARGS[@]:2}"
activate_env
expect_platform gpu
run cd "$REPO_ROOT"
run_last env "CUDA_VISIBLE_DEVICES=${GPU:-0}" "${MAIN[@]}"
