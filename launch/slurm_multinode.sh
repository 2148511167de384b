#!/usr/bin/env bash
# Submits a multi-node ImageNet run (Table 2) to SLURM: sbatch launch/imagenet_slurm.sbatch
# with the job's size; by default one process per node, each driving all of its node's GPUs.
#
# Usage: launch/slurm_multinode.sh [--dry_run] <preset> <workdir> [--config.<field>=<value> ...]
#   NODES=8 launch/slurm_multinode.sh labels=true,aug,dropout,wd /shared/ckpt/t2_row1
#   PARTITION=gpu TIME=24:00:00 launch/slurm_multinode.sh labels=random /shared/ckpt/t2_random
#   TASKS_PER_NODE=gpu launch/slurm_multinode.sh labels=random /shared/ckpt/t2_random
#
# <preset> is an argument of configs/imagenet.py (labels=true|random plus any of aug,
# dropout, wd). config.batch_size (global) must divide evenly over NODES x GPUS_PER_NODE
# GPUs. The job requeues itself when SIGTERM (time limit, preemption) made the trainer save
# and exit 75; the requeued job resumes from <workdir>, which every node must see, as must
# the data. With --dry_run, it prints the sbatch command and the commands the batch script
# then runs; `python -m rethinking.distributed --explain` under srun prints each task's
# plan (devices, batch split, learning rate) in a job of seconds.
#
# Environment: NODES (default 4), GPUS_PER_NODE (8), TASKS_PER_NODE (1: one process per
# node driving its GPUs; gpu: one process per GPU), CPUS_PER_NODE (32), TIME (48:00:00),
# PARTITION, ACCOUNT, QOS (cluster defaults when unset), DATASET, DATA_DIR, VENV (as in
# launch/imagenet_one_node.sh; the environment every node activates), DRY_RUN=1 (as --dry_run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_args 2 "$@"
workdir=$(absolute "${ARGS[1]}")
DATA_DIR=$(absolute "$DATA_DIR")
VENV=$(absolute "$VENV")
if [[ -d $DATASET ]]; then DATASET=$(absolute "$DATASET"); fi
gpus=${GPUS_PER_NODE:-8}
cpus=${CPUS_PER_NODE:-32}
case ${TASKS_PER_NODE:-1} in
  1) tasks=1 ;;
  gpu) tasks=$gpus ;;
  *) echo "error: TASKS_PER_NODE=${TASKS_PER_NODE}: expected 1 or gpu" >&2; exit 2 ;;
esac
sbatch_command=(sbatch "--nodes=${NODES:-4}" "--ntasks-per-node=$tasks" "--gpus-per-node=$gpus"
                "--cpus-per-task=$((cpus / tasks))" "--time=${TIME:-48:00:00}"
                "--chdir=$REPO_ROOT")
for option in partition account qos; do
  value=${option^^}
  if [[ -n ${!value:-} ]]; then sbatch_command+=("--$option=${!value}"); fi
done
sbatch_command+=("--export=ALL,REPO=$REPO_ROOT,VENV=$VENV,DATASET=$DATASET,DATA_DIR=$DATA_DIR"
                 launch/imagenet_slurm.sbatch "${ARGS[0]}" "$workdir" "${ARGS[@]:2}")
run cd "$REPO_ROOT"
if [[ $DRY_RUN == 1 ]]; then
  quoted "${sbatch_command[@]}"
  echo "# then, in the job, launch/imagenet_slurm.sbatch runs:"
  REPO=$REPO_ROOT VENV=$VENV DRY_RUN=1 bash "$REPO_ROOT/launch/imagenet_slurm.sbatch" \
    "${ARGS[0]}" "$workdir" "${ARGS[@]:2}"
else
  exec "${sbatch_command[@]}"
fi
