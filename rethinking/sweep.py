r"""Runs a sweep of configs/sweeps.py, one run after another, each in its own workdir.

  python -m rethinking.sweep --sweep=figure1bc --root=/tmp/f1bc --scale=runlocal \
      --dataset=../shared/data/cifar10_10k.npz
  python -m rethinking.sweep --sweep=table1 --root=/data/rt --dry_run          # list the runs
  python -m rethinking.sweep --sweep=table1 --root=/data/rt --emit=commands    # one per line
  python -m rethinking.sweep --sweep=table1 --root=/data/rt --emit=slurm       # an array job

Workdirs are <root>/<config file stem>/<run name>/seed<k>. Finished runs are skipped and
an interrupted one resumes from its checkpoint, so rerunning a sweep continues it. Each
run is `python -m rethinking.main` in a subprocess (a fresh process per run, as on a
cluster); its progress bar shows, and the sweep prints which run of how many is going
with an ETA from the runs timed so far.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import importlib.util
import os
import pathlib
import shlex
import subprocess
import sys
import time

from absl import app
from absl import flags
import ml_collections

from rethinking import runs as runs_lib
from rethinking import validation
from rethinking import workdir as workdir_lib

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Job:
  """One run of a sweep with one seed, resolved to its config and workdir."""

  name: str
  config_file: str
  arg: str
  overrides: dict
  workdir: str
  config: ml_collections.ConfigDict

  def command(self, python: str = "python") -> list[str]:
    """The `rethinking.main` command line (run from the repo root)."""
    # --config must come before any --config.<field> override.
    return [python, "-m", "rethinking.main", f"--config={self.config_file}:{self.arg}",
            f"--workdir={self.workdir}",
            *(f"--config.{k}={v}" for k, v in self.overrides.items())]

  def status(self) -> str:
    """'new', 'partial' or 'finished'; fails if the workdir holds a different run."""
    run = runs_lib.read_run(self.workdir)
    if run is None:
      return "new"
    workdir_lib.check_resumable(self.config, self.workdir)  # The trainer's own refusal.
    return "finished" if runs_lib.is_finished(run.rows, self.config.num_epochs) else "partial"


def _load_module(path: pathlib.Path, what: str):
  if not path.exists():
    raise FileNotFoundError(f"{path.relative_to(REPO)} not found: {what}")
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _config_module(config_file: str):
  what = ("the ImageNet config (issue 3) is not written yet, so Table 2 cannot be expanded"
          if config_file.endswith("imagenet.py") else "the sweep names a missing config file")
  return _load_module(REPO / config_file, what)


def resolve_config(config_file: str, arg: str, overrides: dict) -> ml_collections.ConfigDict:
  """get_config(arg) of the config file, with overrides; an unknown field fails here."""
  config = _config_module(config_file).get_config(arg)
  config.lock()
  for field, value in overrides.items():
    if field not in config:
      raise KeyError(f"{config_file}:{arg}: no config field {field!r} to override")
    config[field] = value
  return config


def parse_sets(sets: list[str]) -> dict:
  """['num_epochs=2', 'model=mlp_1x512'] -> {'num_epochs': 2, 'model': 'mlp_1x512'}."""
  overrides = {}
  for item in sets:
    field, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--set={item!r}: expected field=value")
    try:
      overrides[field] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[field] = value  # A bare string, e.g. a path.
  return overrides


def expand(sweep: str, root: str, scale: str = "paper", seeds: int = 1,
           dataset: str | None = None, overrides: dict | None = None,
           only: list[str] | None = None) -> list[Job]:
  """The jobs of a sweep: its runs x seeds, each config resolved (so errors show up front)."""
  sweeps = _load_module(REPO / "configs" / "sweeps.py", "the sweep definitions")
  extra = dict(overrides or {})
  if dataset:
    # Runs start in the repo root: a path given from elsewhere must not change meaning.
    extra["dataset"] = os.path.abspath(dataset) if os.path.exists(dataset) else dataset
  jobs = []
  for run in sweeps.get_sweep(sweep, scale):
    if only and not any(fnmatch.fnmatchcase(run["name"], pattern) for pattern in only):
      continue
    for seed in range(seeds):
      run_overrides = {**run["overrides"], **extra, "seed": seed}
      workdir = os.path.join(os.path.abspath(root), pathlib.Path(run["config"]).stem,
                             run["name"], f"seed{seed}")
      config = resolve_config(run["config"], run["arg"], run_overrides)
      try:  # Every run's config checked before the first one starts.
        validation.check_config(config)
      except ValueError as e:
        raise ValueError(f"run {run['name']}: {e}") from None
      jobs.append(Job(name=f"{run['name']}/seed{seed}", config_file=run["config"],
                      arg=run["arg"], overrides=run_overrides, workdir=workdir, config=config))
  if not jobs:
    raise ValueError(f"no runs of sweep {sweep!r} match --only={','.join(only or [])}")
  return jobs


SBATCH_TEMPLATE = REPO / "launch" / "slurm.sbatch.in"
SIGNAL_SECONDS = 120  # SIGTERM this long before the time limit: enough to save a checkpoint.


def render_sbatch(*, job_name: str, resources: list[str], output: str, usage: str, task: str,
                  repo: str, venv: str, platform: str = "gpu",
                  signal_seconds: int = SIGNAL_SECONDS) -> str:
  """launch/slurm.sbatch.in filled in: the batch script of every SLURM job of this repo.

  The template holds what every job needs (environment activation, --requeue,
  --signal=TERM@<s>, the trainer as a job step, a requeue after exit 75); a job adds
  its #SBATCH resource lines, its usage comment and `task`, bash that sets TASK to
  the trainer's command line.
  """
  values = {"job_name": job_name, "resources": "\n".join(f"#SBATCH {r}" for r in resources),
            "output": output, "usage": usage, "task": task, "repo": repo, "venv": venv,
            "platform": platform, "signal_seconds": str(signal_seconds)}
  text = SBATCH_TEMPLATE.read_text()
  for key, value in values.items():
    text = text.replace("{{%s}}" % key, value)
  return text


IMAGENET_USAGE = """\
# The batch script of a multi-node ImageNet run (Table 2) on SLURM: by default one process
# per node, each driving all of its node's GPUs (--ntasks-per-node=<GPUs> for one per GPU);
# rethinking.distributed finds the coordinator, the process count, this process's id and
# its GPUs in SLURM's environment.
#
# Usage: sbatch [--nodes=N ...] launch/imagenet_slurm.sbatch <preset> <workdir> [--config.<field>=<value> ...]
# from the repository root (launch/slurm_multinode.sh submits it with the sizes you ask for):
#   sbatch --nodes=8 launch/imagenet_slurm.sbatch labels=random,wd /shared/ckpt/t2_random_wd
#
# DATASET and DATA_DIR are as in launch/imagenet_one_node.sh."""


def imagenet_sbatch() -> str:
  """launch/imagenet_slurm.sbatch, as rendered from the template (a test keeps them equal)."""
  return render_sbatch(
      job_name="rethinking-imagenet",
      resources=["--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--cpus-per-task=32",
                 "--time=48:00:00"],
      output="rethinking-imagenet-%j.out", usage=IMAGENET_USAGE,
      task='parse_args 2 "$@"\n'
           'imagenet_command "${ARGS[0]}" "$(absolute "${ARGS[1]}")" "${ARGS[@]:2}"\n'
           'TASK=("${MAIN[@]}")',
      repo='${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}', venv="$REPO/.venv")


def default_venv() -> str:
  """The environment this sweep runs in (jobs activate it), else <repo>/.venv."""
  if os.environ.get("VIRTUAL_ENV"):
    return os.environ["VIRTUAL_ENV"]
  return sys.prefix if sys.prefix != sys.base_prefix else str(REPO / ".venv")


def slurm_script(jobs: list[Job], sweep: str, root: str, venv: str | None = None) -> str:
  """A SLURM array job, one task per run; resubmitting it resumes the unfinished ones.

  Runs on one GPU each (CIFAR-10), or one node's 8 GPUs each for ImageNet runs.
  """
  logs = os.path.join(os.path.abspath(root), "slurm")
  imagenet = any(job.config.get("pipeline") == "imagenet" for job in jobs)
  resources = [f"--array=0-{len(jobs) - 1}"]
  resources += (["--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=8", "--cpus-per-task=32",
                 "--time=48:00:00"] if imagenet else
                ["--ntasks=1", "--gres=gpu:1", "--cpus-per-task=8", "--time=24:00:00"])
  cases = "\n".join(f"  {i}) TASK=({shlex.join(job.command())}) ;;"
                     for i, job in enumerate(jobs))
  task = ('parse_args 0 "$@"\n'
          'case ${SLURM_ARRAY_TASK_ID:-} in\n'
          f'{cases}\n'
          f'  *) echo "error: array task \'${{SLURM_ARRAY_TASK_ID:-}}\' is not one of 0-{len(jobs) - 1}'
          ' (submit with sbatch)" >&2; exit 2 ;;\n'
          'esac')
  usage = (f"# The {sweep} sweep, {len(jobs)} runs, one per array task (written by "
           "rethinking.sweep).\n"
           f"# Submit with `sbatch {sweep}.sbatch`; adapt the #SBATCH lines to your cluster. "
           "Finished\n# runs exit at once and interrupted ones resume, so resubmitting "
           "continues the sweep.\n"
           f"# One task\'s commands: SLURM_ARRAY_TASK_ID=0 bash {sweep}.sbatch --dry_run")
  return render_sbatch(job_name=f"rethinking-{sweep}", resources=resources,
                       output=f"{logs}/%x-%A_%a.out", usage=usage, task=task,
                       repo=shlex.quote(str(REPO)), venv=shlex.quote(venv or default_venv()))


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def eta(pending: list[Job], timed: dict[str, list[float]]) -> str:
  """Remaining time from the mean duration of runs of the same model (else of any run)."""
  every = [t for ts in timed.values() for t in ts]
  if not every:
    return "ETA after the first run"
  mean = lambda ts: sum(ts) / len(ts)
  return "ETA " + _duration(sum(mean(timed.get(j.config.get("model"), every)) for j in pending))


def run_jobs(jobs: list[Job], python: str = sys.executable) -> list[Job]:
  """Runs the unfinished jobs one after another; returns those that failed."""
  statuses = [job.status() for job in jobs]  # A workdir holding another run fails up front.
  timed: dict[str, list[float]] = {}
  failed = []
  start = time.time()
  for i, (job, status) in enumerate(zip(jobs, statuses), 1):
    if status == "finished":
      print(f"run {i}/{len(jobs)}: {job.name}: finished, skipped", flush=True)
      continue
    pending = [j for j, s in zip(jobs[i - 1:], statuses[i - 1:]) if s != "finished"]
    print(f"run {i}/{len(jobs)}: {job.name}{' (resuming)' if status == 'partial' else ''}"
          f" [{_duration(time.time() - start)} so far, {eta(pending, timed)}]", flush=True)
    t0 = time.time()
    if subprocess.run(job.command(python), cwd=REPO, check=False).returncode:
      print(f"run {i}/{len(jobs)}: {job.name} FAILED; its workdir: {job.workdir}", flush=True)
      failed.append(job)
    else:
      timed.setdefault(job.config.get("model"), []).append(time.time() - t0)
  print(f"sweep done in {_duration(time.time() - start)}: {len(jobs)} runs, "
        f"{len(failed)} failed", flush=True)
  return failed


def expand_all(sweeps: list[str], root: str, scale: str = "paper", **kwargs) -> list[Job]:
  """The jobs of several sweeps, in order; a run in two of them (Table 1's Inception is
  Figure 1a's true labels) once. An `only` pattern may match in any one of them."""
  only = kwargs.pop("only", None)
  jobs = {}
  for name in sweeps:
    for job in expand(name, root, scale, **kwargs):
      if not only or any(fnmatch.fnmatchcase(job.name.rpartition("/")[0], p) for p in only):
        jobs.setdefault(job.workdir, job)
  if not jobs:
    raise ValueError(f"no runs of sweep {','.join(sweeps)!r} match --only={','.join(only)}")
  return list(jobs.values())


def fit_threshold(scale: str) -> float:
  """The train accuracy at which the report reads Figure 1b's time to fit at `scale`."""
  from rethinking import paper  # pylint: disable=g-import-not-at-top
  sweeps = _load_module(REPO / "configs" / "sweeps.py", "the sweep definitions")
  return sweeps.FIT_THRESHOLDS.get(scale, paper.FIT_THRESHOLD)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    jobs = expand_all(FLAGS.sweep, FLAGS.root, FLAGS.scale, seeds=FLAGS.seeds,
                      dataset=FLAGS.dataset, overrides=parse_sets(FLAGS.set), only=FLAGS.only)
  except (ValueError, TypeError, KeyError) as e:  # Unknown sweep, bad --set, empty --only.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  name = "+".join(FLAGS.sweep)
  if FLAGS.emit == "commands":
    print("\n".join(shlex.join(job.command()) for job in jobs))
  elif FLAGS.emit == "slurm":
    os.makedirs(os.path.join(FLAGS.root, "slurm"), exist_ok=True)  # SLURM makes no log dirs.
    path = os.path.join(FLAGS.root, f"{name}.sbatch")
    with open(path, "w") as f:
      f.write(slurm_script(jobs, name, FLAGS.root, FLAGS.venv))
    print(f"wrote {path} ({len(jobs)} array tasks); run from anywhere: sbatch {path}")
  elif FLAGS.dry_run:
    for i, job in enumerate(jobs, 1):
      print(f"{i:3d} {job.status():8s} {job.name:50s} {shlex.join(job.command()[3:])}")
  else:
    failed = run_jobs(jobs)
    if FLAGS.report:
      from rethinking import report  # pylint: disable=g-import-not-at-top
      threshold = fit_threshold(FLAGS.scale)
      print(f"wrote {report.write_report(FLAGS.root, FLAGS.report, threshold)} (time to fit "
            f"at {threshold:.0%} train accuracy)", flush=True)
    if failed:
      sys.exit(1)


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so modules can share names)."""
  flags.DEFINE_list("sweep", None, "Sweeps of configs/sweeps.py, e.g. table1 or "
                    "figure1bc,figure1a (run in that order).")
  flags.DEFINE_string("root", None, "Directory under which each run gets its workdir.")
  flags.DEFINE_enum("scale", "paper", ["paper", "runlocal", "cpu"],
                    "runlocal: shrunk for a CPU; cpu: sized so Figures 1a-1c show on a CPU.")
  flags.DEFINE_integer("seeds", 1, "Repeat every run with seeds 0, ..., seeds - 1.")
  flags.DEFINE_string("dataset", None, "Overrides config.dataset (e.g. a local .npz).")
  flags.DEFINE_list("only", None, "Keep only runs whose name matches one of these globs.")
  flags.DEFINE_multi_string("set", [], "field=value: a config override for every run.")
  flags.DEFINE_bool("dry_run", False, "List the runs and their status; run nothing.")
  flags.DEFINE_enum("emit", None, ["commands", "slurm"],
                    "Print one command per run, or write <root>/<sweep>.sbatch; run nothing.")
  flags.DEFINE_string("report", None, "After the runs, write the report of every run under "
                      "--root here (rethinking.report; Figure 1b read at the scale's fit "
                      "threshold: 90% at cpu scale).")
  flags.DEFINE_string("venv", None, "--emit=slurm: the Python environment each job activates "
                      "(default: the one running this command, else <repo>/.venv).")
  flags.mark_flags_as_required(["sweep", "root"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
