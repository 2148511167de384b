#!/usr/bin/env bash
# Submits a multi-node ImageNet run (Table 2) to SLURM: sbatch launch/imagenet_slurm.sbatch
# with the job's size, one process per node, each driving all of its node's GPUs.
#
# Usage: launch/slurm_multinode.sh [--dry_run] <preset> <workdir> [--config.<field>=<value> ...]
#   NODES=8 launch/slurm_multinode.sh labels=true,aug,dropout,wd /shared/ckpt/t2_row1
#   PARTITION=gpu TIME=24:00:00 launch/slurm_multinode.sh labels=random /shared/ckpt/t2_random
#
# <preset> is an argument of configs/imagenet.py (labels=true|random plus any of aug,
# dropout, wd). config.batch_size (global) must divide evenly over NODES x GPUS_PER_NODE
# GPUs. The job requeues itself when SIGTERM (time limit, preemption) made the trainer save
# and exit 75; the requeued job resumes from <workdir>, which every node must see, as must
# the data. With --dry_run, it prints the sbatch command and the commands the batch script
# then runs.
#
# Environment: NODES (default 4), GPUS_PER_NODE (8), CPUS_PER_NODE (32), TIME (48:00:00),
# PARTITION, ACCOUNT, QOS (cluster defaults when unset), DATASET, DATA_DIR, PYTHON (as in
# launch/imagenet_one_node.sh), DRY_RUN=1 (as --dry_run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_args 2 "$@"
workdir=$(absolute "${ARGS[1]}")
DATA_DIR=$(absolute "$DATA_DIR")
if [[ -d $DATASET ]]; then DATASET=$(absolute "$DATASET"); fi
sbatch_command=(sbatch "--nodes=${NODES:-4}" --ntasks-per-node=1
                "--gpus-per-node=${GPUS_PER_NODE:-8}" "--cpus-per-task=${CPUS_PER_NODE:-32}"
                "--time=${TIME:-48:00:00}" "--chdir=$REPO_ROOT")
for option in partition account qos; do
  value=${option^^}
  if [[ -n ${!value:-} ]]; then sbatch_command+=("--$option=${!value}"); fi
done
sbatch_command+=("--export=ALL,REPO=$REPO_ROOT,DATASET=$DATASET,DATA_DIR=$DATA_DIR,PYTHON=$PYTHON"
                 launch/imagenet_slurm.sbatch "${ARGS[0]}" "$workdir" "${ARGS[@]:2}")
run cd "$REPO_ROOT"
if [[ $DRY_RUN == 1 ]]; then
  quoted "${sbatch_command[@]}"
  echo "# then, in the job, launch/imagenet_slurm.sbatch runs:"
  REPO=$REPO_ROOT DRY_RUN=1 bash "$REPO_ROOT/launch/imagenet_slurm.sbatch" "${ARGS[0]}" "$workdir" \
    "${ARGS[@]:2}"
else
  exec "${sbatch_command[@]}"
fi
