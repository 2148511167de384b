"""The epoch loop's dispatch chunks and evaluation cadence, and the per-backend defaults.

Chunks: fused dispatches come in two lengths, never cross a sync point, and train
the state that single steps train. Cadence: the training set is evaluated every
`eval_train_every_epochs` epochs, at the last, and every epoch of a fit run.
"""

import importlib.util
import json
import math
import pathlib

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from conftest import REPO
from rethinking import backend_defaults
from rethinking import loop
from rethinking import report
from rethinking import runs
from rethinking import step as step_lib
from rethinking import train
from rethinking.models import get_model


def _cifar_config(arg="model=mlp_1x512", **overrides):
  spec = importlib.util.spec_from_file_location("cifar10_cfg", REPO / "configs" / "cifar10.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.update(overrides)
  return config


# --- Chunks: a fake task, so only the loop's arithmetic is under test ----------------


class _CountingTask:
  """A task whose step only counts: records each dispatch's (first step, length)."""

  def __init__(self, steps_per_epoch):
    self.steps_per_epoch = steps_per_epoch
    self.learning_rate_fn = lambda step: 0.1
    self.run_info = {}
    self.calls = []

  def init_state(self):
    model = get_model("mlp_1x512", num_classes=10)
    return step_lib.create_train_state(jax.random.PRNGKey(0), model, (2, 2, 1), optax.sgd(0.1))

  def train(self, state, sums, step, num_steps):
    self.calls.append((step, num_steps))
    return state.replace(step=state.step + num_steps), dict(
        sums, loss=sums["loss"] + num_steps, count=sums["count"] + num_steps)

  def evaluate(self, state, train_set=True):
    return {"test_loss": 1.0, "test_accuracy": 0.1}


@pytest.mark.parametrize("k", [16, 12])
def test_chunks_take_few_lengths_and_end_at_every_sync_point(tmp_path, k):
  """391 steps per epoch, a log every 50 steps, a checkpoint every 120: the lengths
  `min(next boundary - step, k)` would take are many (each one a compile); here at
  most log2(k) + 1, and every sync point still ends a dispatch."""
  spe, epochs, log, every = 391, 2, 50, 120
  config = _cifar_config(num_epochs=epochs, log_every_steps=log, checkpoint_every_steps=every,
                         steps_per_dispatch=k, keep_checkpoints=20)
  task = _CountingTask(spe)
  loop.run(config, str(tmp_path), task)

  lengths = {n for _, n in task.calls}
  assert k in lengths and len(lengths) <= math.ceil(math.log2(k)) + 1, lengths
  ends = [step + n for step, n in task.calls]
  assert [step for step, _ in task.calls] == [0] + ends[:-1]  # Contiguous, no step twice.
  assert ends[-1] == spe * epochs
  syncs = {s for s in range(1, spe * epochs + 1)
           if s % log == 0 or s % every == 0 or s % spe == 0}
  assert syncs <= set(ends), sorted(syncs - set(ends))  # Every sync where it was...
  for step, n in task.calls:  # ... and none skipped inside a chunk.
    assert not any(step < s < step + n for s in syncs), (step, n)
  # Fused where k steps fit before the next sync point.
  assert sum(n == k for _, n in task.calls) == sum(
      (b - a) // k for a, b in zip([0] + sorted(syncs)[:-1], sorted(syncs)))
  # The mid-epoch checkpoints, where they were.
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == sorted(s for s in syncs if s % every == 0 or s % spe == 0)


# --- A real model: fused chunks train the state single steps train -------------------


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  """200 random 32x32 training images (25 steps of 8 per epoch), 32 test images."""
  path = tmp_path_factory.mktemp("data") / "tiny.npz"
  rng = np.random.default_rng(0)
  np.savez(path, x_train=rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8),
           y_train=rng.integers(0, 10, 200), y_test=np.arange(32) % 10,
           x_test=rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8))
  return str(path)


def _tiny(tiny_npz, **overrides):
  # Every source of randomness in a step: data order, augmentation, dropout.
  return _cifar_config("model=mlp_1x512,corruption=random_labels,augment=crop_flip",
                       **dict(dict(dataset=tiny_npz, batch_size=8, eval_batch_size=32,
                                   dropout_rate=0.2, num_epochs=2, log_every_steps=7,
                                   checkpoint_every_steps=10), **overrides))


def _final_arrays(workdir) -> list[np.ndarray]:
  ckpt = pathlib.Path(workdir) / "checkpoints"
  step = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
  state = ocp.StandardCheckpointer().restore((ckpt / str(step) / "state").absolute())
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]


def _rows(workdir):
  return [{k: v for k, v in r.items() if k != "wall_time"}
          for r in runs.read_run(str(workdir)).rows]


def test_fused_run_equals_single_step_run(tmp_path, tiny_npz, monkeypatch):
  """The whole loop with k = 4 (remainders before the log, checkpoint and epoch
  boundaries at 7, 10 and 25 steps) ends bit for bit where k = 1 does: an MLP's
  fused program rounds as the plain step does on a CPU."""
  lengths = []
  real_train = train.InMemoryTask.train

  def counting_train(self, state, sums, step, num_steps):
    lengths.append(num_steps)
    return real_train(self, state, sums, step, num_steps)

  monkeypatch.setattr(train.InMemoryTask, "train", counting_train)
  train.train_and_evaluate(_tiny(tiny_npz, steps_per_dispatch=1), str(tmp_path / "single"))
  assert set(lengths) == {1}
  lengths.clear()
  train.train_and_evaluate(_tiny(tiny_npz, steps_per_dispatch=4), str(tmp_path / "fused"))
  assert set(lengths) == {1, 4}  # Fused, and the remainders one step at a time.

  single, fused = _final_arrays(tmp_path / "single"), _final_arrays(tmp_path / "fused")
  assert len(single) == len(fused) > 4
  for a, b in zip(single, fused):
    np.testing.assert_array_equal(a, b)
  assert _rows(tmp_path / "single") == _rows(tmp_path / "fused")


# --- Evaluation cadence -------------------------------------------------------------


def test_train_set_is_evaluated_every_k_epochs_and_at_the_last(tmp_path, tiny_npz):
  workdir = tmp_path / "run"
  row = train.train_and_evaluate(_tiny(tiny_npz, num_epochs=7, eval_train_every_epochs=3,
                                       checkpoint_every_steps=0), str(workdir))
  rows = runs.read_run(str(workdir)).rows
  with_eval = [r["epoch"] for r in rows if "train_eval_accuracy" in r]
  assert with_eval == [3, 6, 7]
  for r in rows:  # The other rows have no train_eval_* (nor its per-group) keys at all.
    if r["epoch"] not in with_eval:
      assert not {k for k in r if k.startswith("train_eval") or
                  k.startswith("train_accuracy_")}, r
    else:
      assert {"train_eval_loss", "train_accuracy_clean", "train_accuracy_corrupted"} <= set(r)
    assert r["train_accuracy"] is not None and r["test_accuracy"] is not None
  # What the report reads of such a run: the last row's eval-mode pass.
  run = runs.read_run(str(workdir))
  assert report.train_accuracy(run) == row["train_eval_accuracy"] == rows[-1][
      "train_eval_accuracy"]


def test_a_fit_run_evaluates_the_train_set_every_epoch(tmp_path, tiny_npz):
  """A fit check reads the eval-mode pass, so a run with stop_at_train_accuracy must not
  skip it: the epoch it fits is reported, not the next evaluated one."""
  workdir = tmp_path / "run"
  # 200 random labels, fitted in eval mode at epoch 2 while the running accuracy is
  # still 0.99: read from the running accuracy, the fit would come an epoch late.
  train.train_and_evaluate(_tiny(tiny_npz, num_epochs=6, eval_train_every_epochs=4,
                                 stop_at_train_accuracy=1.0, checkpoint_every_steps=0,
                                 augment="none", dropout_rate=0.0, learning_rate=0.003),
                           str(workdir))
  rows = runs.read_run(str(workdir)).rows
  assert all("train_eval_accuracy" in r for r in rows)
  assert [r["train_eval_accuracy"] == 1.0 for r in rows] == [False, True]
  assert rows[-1]["train_accuracy"] < 1.0 and rows[-1]["fit_step"] == rows[-1]["step"]


def test_a_run_stops_at_its_train_loss_target(tmp_path, tiny_npz):
  """Figure 1a's criterion: stop at the first epoch whose running loss is below the target,
  and report that run as finished (a rerun of the sweep trains it no further)."""
  workdir = tmp_path / "run"
  config = _tiny(tiny_npz, num_epochs=30, stop_at_train_loss=0.5, checkpoint_every_steps=0,
                 augment="none", dropout_rate=0.0, learning_rate=0.003)
  train.train_and_evaluate(config, str(workdir))
  run = runs.read_run(str(workdir))
  losses = [r["train_loss"] for r in run.rows]
  assert losses[-1] < 0.5 <= min(losses[:-1]) and len(losses) < 30
  assert run.rows[-1]["fit_step"] == run.rows[-1]["step"] and run.finished
  assert report.loss_below_step(run, 0.5) == run.rows[-1]["step"]


@pytest.mark.parametrize("every,fit,num_epochs,expected", [
    (1, 0.0, 4, [1, 2, 3, 4]),
    (3, 0.0, 7, [3, 6, 7]),
    (5, 0.0, 3, [3]),
    (3, 1.0, 5, [1, 2, 3, 4, 5]),
])
def test_evaluates_train_set(every, fit, num_epochs, expected):
  config = _cifar_config(eval_train_every_epochs=every, stop_at_train_accuracy=fit,
                         num_epochs=num_epochs)
  assert [e for e in range(1, num_epochs + 1) if loop.evaluates_train_set(config, e)] == expected


# --- Per-backend defaults -------------------------------------------------------------


@pytest.mark.parametrize("backend,steps,half", [
    ("cpu", 1, False), ("gpu", backend_defaults.FUSED_STEPS, True),
    ("tpu", backend_defaults.FUSED_STEPS, True)])
def test_auto_fields_resolve_per_backend(backend, steps, half):
  config = _cifar_config()
  assert (config.steps_per_dispatch, config.half_precision) == (0, None)  # Auto by default.
  resolved = backend_defaults.resolve(config, backend=backend)
  assert (resolved.steps_per_dispatch, resolved.half_precision) == (steps, half)
  assert (config.steps_per_dispatch, config.half_precision) == (0, None)  # Not mutated.
  # An explicit value wins, float32 included; a resumed run keeps its precision.
  explicit = _cifar_config(steps_per_dispatch=3, half_precision=False)
  assert (backend_defaults.resolve(explicit, backend=backend).steps_per_dispatch,
          backend_defaults.resolve(explicit, backend=backend).half_precision) == (3, False)
  assert backend_defaults.resolve(config, {"half_precision": not half},
                                  backend=backend).half_precision == (not half)


def test_a_run_records_the_resolved_values_and_a_resume_keeps_its_precision(tmp_path,
                                                                           tiny_npz):
  workdir = tmp_path / "run"
  train.train_and_evaluate(_tiny(tiny_npz, num_epochs=1, half_precision=True), str(workdir))
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["half_precision"] is True and saved["steps_per_dispatch"] == 1  # CPU: 1.
  # Resumed with the auto default (which is float32 on this CPU): continues in bfloat16,
  # not refused as a change of precision.
  row = train.train_and_evaluate(_tiny(tiny_npz, num_epochs=2), str(workdir))
  assert row["epoch"] == 2
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["half_precision"] is True
  (entry,) = [json.loads(l) for l in (workdir / "config_history.jsonl").read_text().splitlines()]
  assert entry["changed"] == {"num_epochs": [1, 2]}
  # A new run with the auto default records float32 (this machine's value), not null.
  train.train_and_evaluate(_tiny(tiny_npz, num_epochs=1), str(tmp_path / "new"))
  assert json.loads((tmp_path / "new" / "config.json").read_text())["half_precision"] is False
