"""Multi-host initialization on every launch shape, against simulated clusters.

Each test sets the environment a cluster gives one process (SLURM's variables; a
Cloud TPU VM's metadata server, faked where JAX reads it), runs
`distributed.initialize` with `jax.distributed.initialize` replaced by a recorder,
and checks what JAX would receive and the device layout that follows. The real
multi-process run (a local coordinator, gloo) is in tests/test_multihost.py.
"""

import os
import subprocess
import sys

import jax
import pytest

from rethinking import distributed

from conftest import REPO

jax.config.update("jax_platforms", "cpu")  # Fake CPU devices, also on a GPU or TPU machine.

_CLUSTER_VARS = ("SLURM_", "OMPI_", "TPU_", "MEGASCALE_", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE",
                 "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                 "KUBERNETES_SERVICE_HOST", distributed.EXPECT_PLATFORM)


@pytest.fixture
def cluster(monkeypatch):
  """A clean environment and a recorder in place of jax.distributed.initialize."""
  for var in list(os.environ):
    if var.startswith(_CLUSTER_VARS):
      monkeypatch.delenv(var)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.config, "update", lambda *a: None)  # gloo: nothing to set up here.

  def run(env: dict) -> dict | None:
    """Initializes as the process with `env` would; returns JAX's kwargs (None: not called)."""
    with monkeypatch.context() as m:
      for k, v in env.items():
        m.setenv(k, str(v))
      before = len(calls)
      distributed.initialize()
      return calls[-1] if len(calls) > before else None
  return run


def _slurm(job=1234, nodes=2, tasks_per_node=1, gpus_per_node=8, bind_one_gpu=False):
  """SLURM's environment for every task of a step, in process order."""
  ntasks = nodes * tasks_per_node
  for rank in range(ntasks):
    node, local = divmod(rank, tasks_per_node)
    env = {"SLURM_JOB_ID": job, "SLURM_STEP_NODELIST": f"gpu-node[01-{nodes:02d}]",
           "SLURM_NTASKS": ntasks, "SLURM_PROCID": rank, "SLURM_LOCALID": local,
           "SLURM_NODEID": node, "SLURM_STEP_NUM_NODES": nodes,
           "SLURM_STEP_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})",
           "SLURM_GPUS_ON_NODE": gpus_per_node,
           "CUDA_VISIBLE_DEVICES": (str(local) if bind_one_gpu
                                    else ",".join(map(str, range(gpus_per_node))))}
    yield env


JAX_SLURM_PORT = 1234 % 4096 + 61440  # JAX's port for SLURM job 1234.


def test_slurm_one_task_per_node_uses_every_gpu(cluster):
  calls = [cluster(env) for env in _slurm(nodes=2, tasks_per_node=1)]
  assert calls == [{"coordinator_address": f"gpu-node01:{JAX_SLURM_PORT}", "num_processes": 2,
                    "process_id": rank, "local_device_ids": list(range(8)),
                    "cluster_detection_method": "deactivate"} for rank in range(2)]
  assert sum(len(c["local_device_ids"]) for c in calls) == 16  # 2 nodes x 8 GPUs.


def test_jax_alone_would_give_each_node_one_gpu(cluster):
  """The bug the explicit local_device_ids fix: JAX's SLURM detection picks GPU SLURM_LOCALID."""
  from jax._src import clusters  # pylint: disable=g-import-not-at-top
  env = next(_slurm(nodes=2, tasks_per_node=1))
  with pytest.MonkeyPatch.context() as m:
    for k, v in env.items():
      m.setenv(k, str(v))
    detected = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, 10)
  assert detected == (f"gpu-node01:{JAX_SLURM_PORT}", 2, 0, [0])


@pytest.mark.parametrize("bind_one_gpu", [False, True])
def test_slurm_one_task_per_gpu(cluster, bind_one_gpu):
  calls = [cluster(env) for env in _slurm(nodes=2, tasks_per_node=8, bind_one_gpu=bind_one_gpu)]
  assert [c["process_id"] for c in calls] == list(range(16))
  assert {c["num_processes"] for c in calls} == {16}
  assert {c["coordinator_address"] for c in calls} == {f"gpu-node01:{JAX_SLURM_PORT}"}
  # All GPUs visible to each task: its own by local rank; one bound GPU: ordinal 0.
  want = [[0] if bind_one_gpu else [rank % 8] for rank in range(16)]
  assert [c["local_device_ids"] for c in calls] == want
  gpus = {(rank // 8, int(env["CUDA_VISIBLE_DEVICES"].split(",")[ids[0]]))
          for rank, (env, ids) in enumerate(zip(_slurm(nodes=2, tasks_per_node=8,
                                                       bind_one_gpu=bind_one_gpu), want))}
  assert len(gpus) == 16  # Every (node, physical GPU) driven by exactly one process.


def test_slurm_two_tasks_per_node_split_the_gpus(cluster):
  calls = [cluster(env) for env in _slurm(nodes=2, tasks_per_node=2)]
  assert [c["local_device_ids"] for c in calls] == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2


def test_slurm_single_task_and_no_cluster_skip_jax_distributed(cluster):
  env = next(_slurm(nodes=1, tasks_per_node=1))
  assert cluster(env) is None
  assert cluster({}) is None


def test_slurm_more_tasks_than_gpus_is_one_error_line(cluster, capsys):
  env = list(_slurm(nodes=1, tasks_per_node=3, gpus_per_node=8))[1]
  with pytest.raises(SystemExit) as e:
    cluster(env)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: 3 SLURM tasks on this node share 8 GPUs")


def _fake_tpu_vm(monkeypatch, metadata: dict):
  """A Cloud TPU VM as JAX sees it: libtpu found chips at import, the metadata server answers."""
  from jax._src.clusters import cloud_tpu_cluster  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
  monkeypatch.setattr(cloud_tpu_cluster, "get_metadata",
                      lambda key: (metadata[key], 200) if key in metadata else ("", 404))


def test_cloud_tpu_vm_pod_worker_launched_with_gcloud_worker_all(cluster, monkeypatch):
  """`gcloud compute tpus tpu-vm ssh --worker=all`: no TPU_WORKER_HOSTNAMES, only metadata."""
  workers = ["10.130.0.2", "10.130.0.3", "10.130.0.4", "10.130.0.5"]  # A v4-32: 4 hosts.
  calls = []
  for worker in range(4):
    _fake_tpu_vm(monkeypatch, {"agent-worker-number": str(worker),
                               "worker-network-endpoints": ",".join(workers), "tpu-env": ""})
    calls.append(cluster({}))
  assert calls == [{"coordinator_address": "10.130.0.2:8482", "num_processes": 4,
                    "process_id": worker, "local_device_ids": None,  # Every local chip.
                    "cluster_detection_method": "deactivate"} for worker in range(4)]


def test_gke_tpu_worker(cluster, monkeypatch):
  _fake_tpu_vm(monkeypatch, {})  # No agent-worker-number: not a GCE TPU VM.
  hosts = "10.8.0.11,10.8.0.12"
  calls = [cluster({"TPU_WORKER_HOSTNAMES": hosts, "TPU_WORKER_ID": i}) for i in range(2)]
  assert [(c["coordinator_address"], c["num_processes"], c["process_id"], c["local_device_ids"])
          for c in calls] == [("10.8.0.11:8482", 2, 0, None), ("10.8.0.11:8482", 2, 1, None)]


def test_single_host_tpu_vm_skips_jax_distributed(cluster, monkeypatch):
  _fake_tpu_vm(monkeypatch, {"agent-worker-number": "0", "worker-network-endpoints": "10.0.0.2",
                             "tpu-env": ""})
  assert cluster({}) is None


def test_explicit_flags_win_over_slurm_and_detection_is_off(cluster, monkeypatch):
  for k, v in next(_slurm(nodes=2)).items():
    monkeypatch.setenv(k, str(v))
  plan = distributed.plan("localhost:1234", 2, 1)
  assert plan.initialize_kwargs() == {
      "coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1,
      "local_device_ids": None, "cluster_detection_method": "deactivate"}
  monkeypatch.setenv("JAX_LOCAL_DEVICE_IDS", "2,3")
  assert distributed.plan("localhost:1234", 2, 1).local_device_ids == (2, 3)
  with pytest.raises(ValueError, match="go together"):
    distributed.plan("localhost:1234", 2)
  with pytest.raises(ValueError, match=r"--process_id=2 is not in 0..1"):
    distributed.plan("localhost:1234", 2, 2)


def test_expected_platform_stops_a_cpu_jax_with_one_line(cluster, capsys):
  assert cluster({distributed.EXPECT_PLATFORM: "cpu"}) is None  # Matches: runs on.
  with pytest.raises(SystemExit) as e:
    cluster({distributed.EXPECT_PLATFORM: "gpu"})
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert err.startswith(f"error: {distributed.EXPECT_PLATFORM}=gpu, but jax ")
  assert "runs on cpu" in err and "pip install -e '.[cuda12]'" in err


def _explain(env: dict, *flags: str) -> subprocess.CompletedProcess:
  clean = {k: v for k, v in os.environ.items() if not k.startswith(_CLUSTER_VARS)}
  return subprocess.run(
      [sys.executable, "-m", "rethinking.distributed", "--explain",
       "--config=configs/imagenet.py:runlocal", *flags],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**clean, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           **{k: str(v) for k, v in env.items()}})


def test_explain_prints_the_plan_devices_batch_and_learning_rate():
  env = list(_slurm(nodes=2, tasks_per_node=1))[1]
  env.pop("CUDA_VISIBLE_DEVICES")
  env["SLURM_GPUS_ON_NODE"] = "0"  # A CPU node: 8 fake CPU devices per process.
  proc = _explain(env)
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout.splitlines()
  assert out[0].startswith("plan: process 1 of 2 (slurm; coordinator gpu-node01:")
  assert out[1] == ("would call: jax.distributed.initialize(coordinator_address="
                    f"'gpu-node01:{JAX_SLURM_PORT}', num_processes=2, process_id=1, "
                    "local_device_ids=None, cluster_detection_method='deactivate')")
  assert out[2].startswith("local devices (8, cpu): ")
  assert out[3:] == ["global devices: 16 = 2 process(es) x 8",
                     "batch_size: 16 global = 16 devices x 1",
                     "eval_batch_size: 16 global = 16 devices x 1",
                     "learning_rate: 0.00625 = 0.1 x 16 / 256 (linear scaling)"]
  bad = _explain(env, "--config.batch_size=24", "--config.eval_batch_size=32")
  assert bad.returncode == 2
  assert "batch_size: ERROR: 24 does not split over 16 devices; use a multiple of 16" in bad.stdout
  wrong = _explain({distributed.EXPECT_PLATFORM: "tpu"})
  assert wrong.returncode == 2 and f"platform: ERROR: {distributed.EXPECT_PLATFORM}=tpu" in (
      wrong.stdout)


def test_main_dry_run_prints_the_plan_and_trains_nothing(tmp_path):
  """`python -m rethinking.main <a run's flags> --dry_run`: the same plan, before anything runs."""
  clean = {k: v for k, v in os.environ.items() if not k.startswith(_CLUSTER_VARS)}
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "rethinking.main", "--config=configs/imagenet.py:labels=true,wd",
       f"--workdir={workdir}", "--coordinator_address=10.0.0.1:1234", "--num_processes=4",
       "--process_id=3", "--dry_run"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**clean, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout.splitlines()
  assert out[0].startswith("plan: process 3 of 4 (explicit; coordinator 10.0.0.1:1234)")
  assert out[-4:] == ["global devices: 8 = 4 process(es) x 2",
                      "batch_size: 1024 global = 8 devices x 128",
                      "eval_batch_size: 1024 global = 8 devices x 128",
                      "learning_rate: 0.4 = 0.1 x 1024 / 256 (linear scaling)"]
  assert not workdir.exists()


def test_dry_run_refuses_a_config_the_run_would_refuse(tmp_path):
  """A plan is only printed for a run that could start: a bad field is its one error line."""
  clean = {k: v for k, v in os.environ.items() if not k.startswith(_CLUSTER_VARS)}
  proc = subprocess.run(
      [sys.executable, "-m", "rethinking.main", "--config=configs/imagenet.py:runlocal",
       f"--workdir={tmp_path / 'run'}", "--config.batch_size=0", "--dry_run"],
      cwd=REPO, capture_output=True, text=True, timeout=300, env={**clean, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2 and "plan:" not in proc.stdout
  assert proc.stderr.strip() == ("error: config.batch_size=0 is not allowed: expected a "
                                 "positive integer")
