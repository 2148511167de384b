r"""Joining a multi-process (multi-host) JAX run, before any device is touched.

Every launch shape is resolved here into one `Plan` (coordinator, process count,
process id, local device ids), which is passed to `jax.distributed.initialize`
in full with JAX's own cluster detection turned off, so what runs is what the
plan (and `--explain`) says:

  explicit flags   --coordinator_address=host:port --num_processes=N --process_id=i
                   (any machine; several processes on one CPU in the tests).
  SLURM            srun: the coordinator is the step's first node, the port comes
                   from the job id (as JAX picks them); see `slurm_gpu_ids` for GPUs.
  Cloud TPU VM     `gcloud compute tpus tpu-vm ssh --worker=all`: detected as JAX does
                   (libtpu and TPU chips present, then the metadata server's
                   agent-worker-number and worker-network-endpoints).
  GKE TPU          TPU_WORKER_HOSTNAMES (or TPU_PROCESS_ADDRESSES) and TPU_WORKER_ID.
  OpenMPI, K8s     JAX's detection of the coordinator and ranks.

Why not a bare `jax.distributed.initialize()`: on SLURM, JAX restricts each
process to GPU number SLURM_LOCALID, which is right for one task per GPU and
wrong for one task per node (every node would train on its GPU 0 alone). Here
a task's GPUs follow from how many tasks share its node and how many GPUs it
sees. TPUs are never restricted: each worker process drives all of its chips.

`python -m rethinking.main <the run's flags> --dry_run` (or `python -m
rethinking.distributed --explain --config=<config> [flags]`) prints this process's
plan, the devices it would use, the batch split and the scaled learning rate,
without joining anything or training (run it under `srun` for every task).

Launchers set RETHINKING_EXPECT_PLATFORM=gpu|tpu: a process whose JAX has no such
backend (the CPU jax installed by mistake, no GPU in the job) stops at once with
one line instead of training on the CPU.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys

from absl import logging
import jax

EXPECT_PLATFORM = "RETHINKING_EXPECT_PLATFORM"
_PLATFORM_ALIASES = {"cuda": "gpu", "rocm": "gpu", "gpu": "gpu", "tpu": "tpu", "cpu": "cpu"}
_INSTALL = {"gpu": "pip install -e '.[cuda12]' or '.[cuda13]'", "tpu": "pip install -e '.[tpu]'"}
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")  # All present: JAX's own test for a SLURM step.
_GPU_LISTS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")


@dataclasses.dataclass(frozen=True)
class Plan:
  """How this process joins the run.

  Attributes:
    cluster: 'single' (no jax.distributed), 'explicit', 'slurm', 'gcetpu', 'gketpu',
      or the name of another JAX cluster environment.
    num_processes, process_id, coordinator_address: for jax.distributed.
    local_device_ids: the accelerators this process drives; None = every one it sees.
    local_devices: how many that is, where the environment says (GPUs of the task);
      None where only the backend knows (TPU chips, CPU).
    why: how the plan was reached, for the log and `--explain`.
  """

  cluster: str
  num_processes: int = 1
  process_id: int = 0
  coordinator_address: str | None = None
  local_device_ids: tuple[int, ...] | None = None
  local_devices: int | None = None
  why: str = ""

  @property
  def distributed(self) -> bool:
    return self.cluster != "single"

  def initialize_kwargs(self) -> dict:
    """What `jax.distributed.initialize` receives: everything, detection off."""
    return {"coordinator_address": self.coordinator_address,
            "num_processes": self.num_processes, "process_id": self.process_id,
            "local_device_ids": (None if self.local_device_ids is None
                                 else list(self.local_device_ids)),
            "cluster_detection_method": "deactivate"}

  def describe(self) -> str:
    if not self.distributed:
      return f"one process, every visible device ({self.why})"
    ids = ("every visible device" if self.local_device_ids is None
           else f"device ids {list(self.local_device_ids)}")
    return (f"process {self.process_id} of {self.num_processes} ({self.cluster}; "
            f"coordinator {self.coordinator_address}): {ids} ({self.why})")


# --- SLURM ---------------------------------------------------------------------------------

def _tasks_per_node(spec: str) -> list[int]:
  """SLURM's compressed list, e.g. '8(x2),4' -> [8, 8, 4]."""
  counts = []
  for part in spec.split(","):
    m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
    if not m:
      raise ValueError(f"cannot parse SLURM tasks per node {spec!r}")
    counts += [int(m.group(1))] * int(m.group(2) or 1)
  return counts


def _slurm_tasks_on_node(env) -> int | None:
  node = int(env.get("SLURM_NODEID", "0"))
  for var in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
    if env.get(var):
      counts = _tasks_per_node(env[var])
      if node < len(counts):
        return counts[node]
  nodes = int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "0")) or 0)
  ntasks = int(env["SLURM_NTASKS"])
  return ntasks // nodes if nodes and ntasks % nodes == 0 else None


def visible_gpus(env=None) -> int | None:
  """GPUs this process may open, from the environment (None: not said)."""
  env = os.environ if env is None else env
  for var in _GPU_LISTS:
    if var in env:
      value = env[var].strip()
      return 0 if value in ("", "NoDevFiles", "-1") else len(value.split(","))
  if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
    return int(env["SLURM_GPUS_ON_NODE"])
  return None


def slurm_gpu_ids(local_rank: int, tasks_on_node: int | None,
                  gpus: int | None) -> tuple[tuple[int, ...] | None, str]:
  """The GPU ordinals (within the task's visible GPUs) one task drives, and why.

  One task per node: all of them. One task per GPU: its own, which is number
  `local_rank` when every task sees all the node's GPUs and number 0 when SLURM
  bound one GPU to each task (--gpus-per-task=1, --gpu-bind). k GPUs per task in
  between. Returns (None, why) where every visible device is right (no GPUs: CPU).
  """
  if gpus == 0:
    return None, "no GPUs visible: CPU devices"
  if tasks_on_node == 1:
    if gpus is None:
      return None, "one task on its node: every GPU it sees"
    return tuple(range(gpus)), f"one task on its node: all {gpus} GPUs"
  if gpus is None or tasks_on_node is None:
    # JAX's rule; right when every task sees the node's GPUs in the same order.
    return (local_rank,), "GPUs per task not in the environment: GPU number SLURM_LOCALID"
  if gpus == 1:
    return (0,), f"{tasks_on_node} tasks on its node, one GPU bound to each"
  if gpus % tasks_on_node:
    raise ValueError(f"{tasks_on_node} SLURM tasks on this node share {gpus} GPUs, which do "
                     "not split evenly: use one task per node (srun --ntasks-per-node=1) or "
                     "one per GPU")
  per_task = gpus // tasks_on_node
  first = local_rank * per_task
  return (tuple(range(first, first + per_task)),
          f"{tasks_on_node} tasks on its node share {gpus} GPUs: {per_task} each")


def _slurm_plan(env) -> Plan:
  from jax._src.clusters import SlurmCluster  # pylint: disable=g-import-not-at-top
  ntasks, rank = int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"])
  if ntasks == 1:
    return Plan("single", why="SLURM step of one task")
  tasks_on_node = _slurm_tasks_on_node(env)
  gpus = visible_gpus(env)
  ids, why = slurm_gpu_ids(int(env["SLURM_LOCALID"]), tasks_on_node, gpus)
  # The coordinator as JAX derives it (first node of the step, port from the job id).
  coordinator = SlurmCluster.get_coordinator_address(
      timeout_secs=None, override_coordinator_port=env.get("JAX_COORDINATOR_PORT"))
  return Plan("slurm", ntasks, rank, coordinator, ids,
              len(ids) if ids is not None and gpus else None, why)


# --- Other clusters: JAX's own detection -------------------------------------------------------

def _jax_cluster():
  """The cluster environment `jax.distributed.initialize()` would pick, SLURM aside."""
  from jax._src import clusters  # pylint: disable=g-import-not-at-top
  for env in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
    if env.opt_in_only_method or env is clusters.SlurmCluster:
      continue
    if env.is_env_present():
      return env
  return None


def _detected_plan(cluster, env, timeout_s: int) -> Plan:
  count = cluster.get_process_count()
  if count == 1:
    return Plan("single", why=f"{cluster.name}: one process")
  coordinator = cluster.get_coordinator_address(
      timeout_secs=timeout_s, override_coordinator_port=env.get("JAX_COORDINATOR_PORT"))
  rank = cluster.get_process_id()
  if "tpu" in cluster.name:
    return Plan(cluster.name, count, rank, coordinator, None, None,
                "TPU worker: every local chip")
  local_rank = cluster.get_local_process_id()
  tasks = (int(env["OMPI_COMM_WORLD_LOCAL_SIZE"]) if "OMPI_COMM_WORLD_LOCAL_SIZE" in env
           else None)
  if local_rank is None:
    return Plan(cluster.name, count, rank, coordinator, None, None, "every visible device")
  gpus = visible_gpus(env)
  ids, why = slurm_gpu_ids(local_rank, tasks, gpus)
  return Plan(cluster.name, count, rank, coordinator, ids,
              len(ids) if ids is not None and gpus else None, why)


# --- The plan --------------------------------------------------------------------------------

def plan(coordinator_address: str | None = None, num_processes: int | None = None,
         process_id: int | None = None, timeout_s: int = 300) -> Plan:
  """Resolves how this process joins the run, from flags, else the environment.

  Raises:
    ValueError: incomplete flags or an impossible layout, with the fix.
  """
  env = os.environ
  if coordinator_address or num_processes is not None or process_id is not None:
    if not coordinator_address or num_processes is None or process_id is None:
      raise ValueError("--coordinator_address, --num_processes and --process_id go together "
                       f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r})")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} is not in 0..{num_processes - 1} "
                       f"(--num_processes={num_processes})")
    ids = env.get("JAX_LOCAL_DEVICE_IDS")
    ids = tuple(int(i) for i in ids.split(",")) if ids else None
    return Plan("explicit", num_processes, process_id, coordinator_address, ids,
                len(ids) if ids else None,
                "flags" + (", JAX_LOCAL_DEVICE_IDS" if ids else ", every visible device"))
  if all(var in env for var in _SLURM_VARS):
    return _slurm_plan(env)
  cluster = _jax_cluster()
  if cluster is not None:
    return _detected_plan(cluster, env, timeout_s)
  return Plan("single", why="no cluster detected")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> Plan:
  """Joins the run as `plan()` says (single processes skip jax.distributed), then checks
  the platform. A bad layout or platform exits with one `error:` line (status 2)."""
  try:
    the_plan = plan(coordinator_address, num_processes, process_id)
  except ValueError as e:
    _exit(e)
  if the_plan.distributed:
    # CPU devices in different processes talk through gloo (tests, CPU clusters).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**the_plan.initialize_kwargs())
    logging.info("jax.distributed: %s; %d local of %d devices", the_plan.describe(),
                 jax.local_device_count(), jax.device_count())
    if the_plan.local_devices and jax.local_device_count() != the_plan.local_devices:
      logging.warning("The plan expected %d local devices, JAX found %d",
                      the_plan.local_devices, jax.local_device_count())
  try:
    check_platform()
  except ValueError as e:
    _exit(e)
  return the_plan


def check_platform(expected: str | None = None) -> None:
  """Fails unless JAX's default backend is `expected` (default: $RETHINKING_EXPECT_PLATFORM).

  Unset, empty or 'any' checks nothing.
  """
  expected = (os.environ.get(EXPECT_PLATFORM, "") if expected is None else expected).lower()
  if expected in ("", "any"):
    return
  want = _PLATFORM_ALIASES.get(expected)
  if want is None:
    raise ValueError(f"{EXPECT_PLATFORM}={expected!r}: expected gpu, tpu, cpu or any")
  got = jax.default_backend()
  if got != want:
    install = _INSTALL.get(want, "")
    raise ValueError(
        f"{EXPECT_PLATFORM}={expected}, but jax {jax.__version__} runs on {got} "
        f"({jax.local_device_count()} {got} devices): "
        + (f"install the {want.upper()} build ({install}) or check the job's {want.upper()}s"
           if install else f"this job expects {want}")
        + f"; unset {EXPECT_PLATFORM} to run on {got}")


def _exit(e: Exception):
  print(f"error: {e}", file=sys.stderr, flush=True)
  raise SystemExit(2)


# --- --explain ---------------------------------------------------------------------------------

def explain(config, coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None) -> str:
  """This process's plan, devices, batch split and learning rate, as text; joins nothing.

  The local devices are listed from the backend with the plan's restriction applied
  (as jax.distributed would apply it), so this starts the backend, never the
  distributed client. The global device count assumes every process sees as many
  devices as this one.
  """
  the_plan = plan(coordinator_address, num_processes, process_id)
  lines = [f"plan: {the_plan.describe()}"]
  if the_plan.distributed:
    kwargs = ", ".join(f"{k}={v!r}" for k, v in the_plan.initialize_kwargs().items())
    lines.append(f"would call: jax.distributed.initialize({kwargs})")
  else:
    lines.append("would call: nothing (jax.distributed is for several processes)")
  if the_plan.local_device_ids is not None:
    visible = ",".join(map(str, the_plan.local_device_ids))
    jax.config.update("jax_cuda_visible_devices", visible)
    jax.config.update("jax_rocm_visible_devices", visible)
  local = jax.local_devices()
  lines.append(f"local devices ({len(local)}, {jax.default_backend()}): "
               + ", ".join(str(d) for d in local))
  expected = os.environ.get(EXPECT_PLATFORM, "")
  try:
    check_platform()
    if expected:
      lines.append(f"platform: {jax.default_backend()} ({EXPECT_PLATFORM}={expected}: ok)")
  except ValueError as e:
    lines.append(f"platform: ERROR: {e}")
  devices = len(local) * the_plan.num_processes
  lines.append(f"global devices: {devices} = {the_plan.num_processes} process(es) x "
               f"{len(local)}")
  lines += batch_lines(config, devices)
  return "\n".join(lines)


def batch_lines(config, devices: int) -> list[str]:
  """The batch split over `devices` and the learning rate after linear scaling."""
  lines = []
  for field in ("batch_size", "eval_batch_size"):
    if field not in config:
      continue
    size = config[field]
    if config.get("pipeline", "in_memory") != "imagenet":
      lines.append(f"{field}: {size} on one device (the in-memory task uses one device)")
    elif size % devices:
      lines.append(f"{field}: ERROR: {size} does not split over {devices} devices; use a "
                   f"multiple of {devices}")
    else:
      lines.append(f"{field}: {size} global = {devices} devices x {size // devices}")
  lr = config.get("learning_rate")
  if lr is not None and config.get("base_batch_size"):
    scaled = lr * config.batch_size / config.base_batch_size
    lines.append(f"learning_rate: {scaled:g} = {lr:g} x {config.batch_size} / "
                 f"{config.base_batch_size} (linear scaling)")
  elif lr is not None:
    lines.append(f"learning_rate: {lr:g}")
  return lines


def dry_run(config, coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None) -> int:
  """Prints `explain(...)`; returns the exit status: 0, or 2 for a plan that cannot run
  (a config the run itself would refuse included)."""
  from rethinking import validation  # pylint: disable=g-import-not-at-top
  try:
    validation.check_config(config)
    text = explain(config, coordinator_address, num_processes, process_id)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  print(text, flush=True)
  return 2 if "ERROR" in text else 0


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if not FLAGS.explain:
    _exit(ValueError("nothing to do: pass --explain (and the run's --config and flags)"))
  sys.exit(dry_run(FLAGS.config, FLAGS.coordinator_address, FLAGS.num_processes,
                   FLAGS.process_id))


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "The run's config (path[:arg]).",
                                  lock_config=True)
  flags.DEFINE_bool("explain", False, "Print this process's plan; join nothing, train nothing.")
  flags.DEFINE_string("coordinator_address", None, "As rethinking.main's flag.")
  flags.DEFINE_integer("num_processes", None, "As rethinking.main's flag.")
  flags.DEFINE_integer("process_id", None, "As rethinking.main's flag.")
  flags.DEFINE_string("workdir", None, "Accepted (and unused) so a run's flags can be reused.")
  flags.mark_flags_as_required(["config"])
  app.run(main)
