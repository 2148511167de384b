#!/usr/bin/env bash
# One ImageNet run (Table 2) on a Cloud TPU VM pod slice: copies this working tree to every
# worker, installs it with its [tpu] extra in a Python 3.12 environment made by uv (a stock
# TPU VM image has Python 3.10; this repository needs 3.11+), and starts the trainer on all
# workers at once (one process per worker, driving all of its chips; rethinking.distributed
# finds the pod through the TPU metadata server, as JAX does).
#
# Usage: launch/imagenet_tpu_pod.sh [--dry_run] <preset> <workdir> [--config.<field>=<value> ...]
#   TPU_NAME=my-v4-64 ZONE=us-central2-b DATA_DIR=gs://my-bucket/tensorflow_datasets \
#     launch/imagenet_tpu_pod.sh labels=true,aug,dropout,wd /mnt/shared/ckpt/t2_row1
#
# <preset> is an argument of configs/imagenet.py (labels=true|random plus any of aug,
# dropout, wd). <workdir> is a path on the workers that all of them share (for example a
# Filestore/NFS mount at the same path on every worker); DATA_DIR is a TFDS data_dir that
# every worker reads (gs://... works) with imagenet2012 already built. The run continues
# from <workdir> when the same command is run again, after a preemption (exit code 75 on
# the workers: SIGTERM, saved) or a lost SSH session.
#
# Environment: TPU_NAME, ZONE (required), PROJECT (default: gcloud's), DATASET, DATA_DIR (as
# in launch/imagenet_one_node.sh, but seen from the workers), REMOTE_DIR (the copy on each
# worker, relative to its home; default rethinking; its environment is REMOTE_DIR/.venv,
# kept between launches), DRY_RUN=1 (as --dry_run: print the commands, run nothing).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_args 2 "$@"
if [[ -z ${TPU_NAME:-} || -z ${ZONE:-} ]]; then
  echo "Set TPU_NAME (the TPU VM) and ZONE (its zone); see $0 --help." >&2
  exit 2
fi
REMOTE_DIR=${REMOTE_DIR:-rethinking}
# Paths are the workers' paths: nothing is made absolute here.
main_command configs/imagenet.py "${ARGS[0]}" "${ARGS[1]}" "--config.dataset=$DATASET" \
  "--config.data_dir=$DATA_DIR" "${ARGS[@]:2}"
gcloud_flags=("--zone=$ZONE" --worker=all)
if [[ -n ${PROJECT:-} ]]; then gcloud_flags+=("--project=$PROJECT"); fi
tarball=${TMPDIR:-/tmp}/rethinking-src.tar.gz
remote=$(quoted mkdir -p "$REMOTE_DIR")
remote+=" && $(quoted tar -xzf rethinking-src.tar.gz -C "$REMOTE_DIR")"
remote+=" && $(quoted cd "$REMOTE_DIR")"
# uv brings Python 3.12 itself; the environment persists, so a relaunch only checks it.
remote+=' && (test -x ~/.local/bin/uv || curl -LsSf https://astral.sh/uv/install.sh'
remote+=' | env UV_INSTALL_DIR=$HOME/.local/bin UV_NO_MODIFY_PATH=1 sh)'
remote+=" && (test -x .venv/bin/python || ~/.local/bin/uv venv -q --python 3.12 .venv)"
remote+=" && ~/.local/bin/uv pip install -q --python .venv/bin/python -e '.[tpu]'"
remote+=" && source .venv/bin/activate && export RETHINKING_EXPECT_PLATFORM=tpu"
remote+=" && $(quoted "${MAIN[@]}")"

run tar -czf "$tarball" -C "$REPO_ROOT" --exclude=.git --exclude=__pycache__ \
  "--exclude=*.egg-info" --exclude=.pytest_cache --exclude=./.venv .
run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:rethinking-src.tar.gz" "${gcloud_flags[@]}"
run_last gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" "--command=$remote"
