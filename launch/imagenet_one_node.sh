#!/usr/bin/env bash
# One ImageNet run (Table 2) on every GPU of one machine: one process, jax.pmap over the GPUs.
#
# Usage: launch/imagenet_one_node.sh [--dry_run] <preset> <workdir> [--config.<field>=<value> ...]
#   launch/imagenet_one_node.sh labels=true,aug,dropout,wd /ckpt/t2_true_aug_dropout_wd
#   launch/imagenet_one_node.sh labels=random,wd /ckpt/t2_random_wd --config.batch_size=512
#
# <preset> is an argument of configs/imagenet.py: labels=true|random plus any of aug,
# dropout, wd (one Table 2 row), or runlocal. config.batch_size is the global batch; it
# must divide evenly over the GPUs. The same command on the same workdir resumes the run;
# exit code 75 means it stopped on SIGTERM/SIGINT after saving: run it again to continue.
#
# Environment: DATASET (default imagenet2012, built by TFDS from the official archives in
# <DATA_DIR>/downloads/manual; or an ImageFolder directory with train/ and validation/),
# DATA_DIR (TFDS data_dir; default $TFDS_DATA_DIR or ~/tensorflow_datasets), GPUS (a
# CUDA_VISIBLE_DEVICES list such as 0,1,2,3; default all), VENV (the Python environment
# to activate; default <repo>/.venv), RETHINKING_EXPECT_PLATFORM (default gpu: a jax
# without a GPU stops at once), DRY_RUN=1 (as --dry_run: print the commands, run nothing).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_args 2 "$@"
imagenet_command "${ARGS[0]}" "$(absolute "${ARGS[1]}")" "${ARGS[@]:2}"
activate_env
expect_platform gpu
run cd "$REPO_ROOT"
if [[ -n ${GPUS:-} ]]; then
  run_last env "CUDA_VISIBLE_DEVICES=$GPUS" "${MAIN[@]}"
else
  run_last "${MAIN[@]}"
fi
