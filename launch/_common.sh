# Shared by the launch scripts (sourced, not run): arguments, dry runs, quoting, the
# Python environment.
#
# A script sources this file, then calls `parse_args N "$@"` (which takes out --dry_run,
# or honours DRY_RUN=1, leaves the rest in ARGS and needs N of them), `activate_env`
# and `expect_platform`, and runs its commands through `run` (the last one through
# `run_last`, which execs, so signals reach the trainer). With a dry run they print
# the commands instead, quoted so that they can be pasted into a shell as is.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The trainer runs in a named environment (docs/imagenet.md, "Installing"), never in
# whatever `python` comes first on PATH.
VENV=${VENV:-$REPO_ROOT/.venv}
PYTHON=python  # The activated environment's (activate_env).
DATASET=${DATASET:-imagenet2012}
DATA_DIR=${DATA_DIR:-${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}}

# The script's header comment (without the #! and #SBATCH lines) is its usage.
usage() {
  awk 'NR > 1 && !/^#/ {exit} /^#!|^#SBATCH/ {next} {sub(/^# ?/, ""); print}' "$0"
}

# parse_args N ARG...: ARGS = the arguments but --dry_run and --help; fewer than N of
# them prints the usage and exits 2.
parse_args() {
  local required=$1 a
  shift
  DRY_RUN=${DRY_RUN:-0}
  ARGS=()
  for a in "$@"; do
    case $a in
      --dry_run | --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      *) ARGS+=("$a") ;;
    esac
  done
  if (( ${#ARGS[@]} < required )); then
    usage >&2
    exit 2
  fi
}

# quoted ARG...: one shell-quoted line; plain words (configs, paths, flags) stay as they are.
quoted() {
  local words=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      words+=("$a")
    else
      words+=("'${a//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${words[*]}"
}

# activate_env: sources $VENV/bin/activate; a missing environment is one error line.
activate_env() {
  if [[ $DRY_RUN == 1 ]]; then
    quoted source "$VENV/bin/activate"
    return 0
  fi
  if [[ ! -f $VENV/bin/activate ]]; then
    echo "error: no Python environment at $VENV: create it (uv venv --python 3.12 $VENV &&" \
      "uv pip install --python $VENV/bin/python -e '$REPO_ROOT[cuda12]'; docs/imagenet.md)" \
      "or set VENV" >&2
    exit 2
  fi
  local flags=$-
  set +u  # Activation scripts may read unset variables.
  source "$VENV/bin/activate"
  if [[ $flags == *u* ]]; then set -u; fi
}

# expect_platform gpu|tpu: the trainer stops at once, with one line, when its jax has no
# such backend (a CPU jax installed by mistake, a job without GPUs) instead of training
# on the CPU. RETHINKING_EXPECT_PLATFORM set by the user wins ('any' allows the CPU).
expect_platform() {
  run export "RETHINKING_EXPECT_PLATFORM=${RETHINKING_EXPECT_PLATFORM:-$1}"
}

run() {
  if [[ $DRY_RUN == 1 ]]; then quoted "$@"; else "$@"; fi
}

run_last() {
  if [[ $DRY_RUN == 1 ]]; then quoted "$@"; else exec "$@"; fi
}

absolute() {
  case $1 in
    /* | *://*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$PWD/$1" ;;
  esac
}

# main_command CONFIG_FILE CONFIG_ARG WORKDIR [OVERRIDE...]: the trainer's command line, in MAIN.
main_command() {
  MAIN=("$PYTHON" -m rethinking.main "--config=$1:$2" "--workdir=$3" "${@:4}")
}

# imagenet_command PRESET WORKDIR [OVERRIDE...]: an ImageNet run on DATASET / DATA_DIR, in MAIN.
imagenet_command() {
  # The trainer runs from the repository root: relative local paths are made absolute.
  if [[ -d $DATASET ]]; then DATASET=$(absolute "$DATASET"); fi
  DATA_DIR=$(absolute "$DATA_DIR")
  main_command configs/imagenet.py "$1" "$2" "--config.dataset=$DATASET" \
    "--config.data_dir=$DATA_DIR" "${@:3}"
}
