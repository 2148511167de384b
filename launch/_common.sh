# Shared by the launch scripts (sourced, not run): arguments, dry runs, quoting.
#
# A script sources this file, then calls `parse_args N "$@"` (which takes out --dry_run,
# or honours DRY_RUN=1, leaves the rest in ARGS and needs N of them) and
# runs its commands through `run` (the last one through `run_last`, which execs, so
# signals reach the trainer). With a dry run both print the command instead, quoted
# so that it can be pasted into a shell as is.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
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
