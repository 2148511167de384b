"""Data parallelism: the pmapped step equals the single-device step on the same global batch."""

import importlib.util
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rethinking import loop
from rethinking import optim
from rethinking import parallel
from rethinking import step as step_lib
from rethinking.models import get_model

from conftest import REPO

B, SIZE = 16, 24


def _setup(model_name, dtype=jnp.float32, **model_kwargs):
  model = get_model(model_name, num_classes=10, dtype=dtype, **model_kwargs)
  tx = optim.make_optimizer(optim.learning_rate_schedule(0.1, 0.95, 10), 0.9, 5e-4)
  state = step_lib.create_train_state(jax.random.PRNGKey(0), model, (SIZE, SIZE, 3), tx)
  if dtype != jnp.float32:  # Parameters are created in float32; the test wants them in dtype.
    cast = lambda tree: jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), tree)
    params = cast(state.params)
    state = state.replace(params=params, batch_stats=cast(state.batch_stats),
                          opt_state=tx.init(params))
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (B, SIZE, SIZE, 3), dtype=np.uint8),
           "label": rng.integers(0, 10, (B,), dtype=np.int32)}
  return model, state, batch


@pytest.mark.parametrize("model_name", ["inception_small", "mlp_1x512"])
def test_pmapped_step_equals_single_device_step(model_name):
  """Computed in float64, so that rounding cannot decide the comparison.

  In float32 a ReLU whose input lies within rounding of 0 switches with the
  summation order (a CPU's vector width, an XLA flag, the batch split): this tiny
  Inception's single-device float32 update moved by 1.3e-2 relative from permuting
  its batch alone, and by 1.6e-2 on an Intel Xeon against an AMD EPYC. In float64
  no input lies that close to a kink; what is left is the float32 classifier head
  (logits are float32 by design), ~1e-7 relative. A real bug is far above the bound:
  BatchNorm statistics left per device give ~0.9, gradients not averaged more.
  """
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  with jax.enable_x64(True):
    model, state, batch = _setup(model_name, jnp.float64)
    # Single device, no axis: the reference.
    single = jax.jit(lambda s, b: step_lib.train_step(
        s, dict(b, image=parallel.to_inputs(b["image"], jnp.float64)), jax.random.PRNGKey(1)))
    want, want_sums = single(state, batch)
    before = [np.asarray(x) for x in jax.tree_util.tree_leaves(state.params)]  # Donated below.
    # 8 devices x 2 examples, BatchNorm and gradients averaged over the axis.
    pmodel = model.clone(axis_name=parallel.AXIS) if hasattr(model, "axis_name") else model
    pstate = state.replace(apply_fn=pmodel.apply)
    train, _ = parallel.pmapped_steps(dtype=jnp.float64)
    sharded = jax.tree_util.tree_map(lambda x: x.reshape(8, B // 8, *x.shape[1:]), batch)
    got, got_sums = train(pstate, loop.train_sums(), sharded, jax.random.PRNGKey(1))
  assert int(got.step) == 1
  assert {np.asarray(x).dtype for x in jax.tree_util.tree_leaves(got.params)} == {np.dtype("float64")}
  for start, a, b in zip(before, jax.tree_util.tree_leaves(got.params),
                          jax.tree_util.tree_leaves(want.params)):
    update_a, update_b = np.asarray(a) - start, np.asarray(b) - start
    assert np.linalg.norm(update_a - update_b) <= 1e-5 * np.linalg.norm(update_b) + 1e-12
  for a, b in zip(jax.tree_util.tree_leaves(got.batch_stats),
                  jax.tree_util.tree_leaves(want.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
  assert bool(want.batch_stats) == (model_name == "inception_small")
  np.testing.assert_allclose(got_sums["loss"], want_sums["loss"], rtol=1e-5)
  assert float(got_sums["count"]) == B and int(got_sums["first_nonfinite_step"]) == -1
  # The state stays one logical copy: every device holds identical parameters.
  for leaf in jax.tree_util.tree_leaves(got.params):
    shards = [np.asarray(s.data) for s in leaf.addressable_shards]
    assert all(np.array_equal(s, shards[0]) for s in shards[1:])


def test_pmapped_eval_sums_match_and_respect_the_mask():
  _, state, batch = _setup("mlp_1x512")
  mask = np.ones(B, np.float32)
  mask[-5:] = 0  # Padding.
  want = step_lib.eval_step(state, dict(batch, image=parallel.to_inputs(batch["image"]),
                                        mask=jnp.asarray(mask)))
  _, evaluate = parallel.pmapped_steps()
  sharded = jax.tree_util.tree_map(lambda x: np.reshape(x, (8, B // 8, *x.shape[1:])),
                                   dict(batch, mask=mask))
  got = evaluate(state, loop.zero_sums(), sharded)
  assert float(got["count"]) == B - 5
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5)


def test_global_batch_must_split_over_devices():
  assert parallel.check_batch(64) == 8
  with pytest.raises(ValueError, match=r"config.batch_size=12 is not divisible by the 8 devices"):
    parallel.check_batch(12)


def _imagenet_config():
  spec = importlib.util.spec_from_file_location("imagenet_config",
                                                REPO / "configs" / "imagenet.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_data_parallel_task_compiles_each_step_once(tmp_path, caplog):
  """pmap keys its compilations on where the inputs live: a fresh state, each epoch's
  new sums and each evaluation's must reuse the steps' first compilation (else an
  Inception V3 run compiles its train step three times, ~20 s each on a CPU)."""
  from rethinking import train  # pylint: disable=g-import-not-at-top
  from rethinking.bench import pipelines  # pylint: disable=g-import-not-at-top
  pipelines.write_jpeg_folder(tmp_path, per_class=8, scale=0.1)
  config = _imagenet_config().get_config("runlocal")
  config.update(dataset=str(tmp_path), model="mlp_1x512", image_size=16, batch_size=8,
                eval_batch_size=8)
  task = train._data_parallel_task(config)()  # pylint: disable=protected-access
  spe = task.steps_per_epoch
  with caplog.at_level(logging.WARNING), jax.log_compiles():
    state, sums = task.train(task.init_state(), loop.train_sums(), 0, 1)  # A fresh state.
    state, sums = task.train(state, sums, 1, spe - 1)  # The step's own outputs.
    first = task.evaluate(state)  # Fresh sums, then the eval step's own.
    state, sums = task.train(state, loop.train_sums(), spe, spe)  # A new epoch's sums.
    second = task.evaluate(state)
  assert spe == 2 and int(state.step) == 2 * spe and float(sums["count"]) == 8 * spe
  assert first["test_count"] == second["test_count"] == 16  # 8 per class x 2 classes.
  # The steps are the programs that take the uint8 images (placing the state and
  # sums compiles a small identity per kind of input, not a step).
  steps = [r.getMessage()[:80] for r in caplog.records
           if r.getMessage().startswith("Compiling") and "uint8[" in r.getMessage()]
  assert len(steps) == 2, steps  # The train step and the eval step, once each.


# --- Device layout: dropout, per-device BatchNorm, input placement (issue 13) ---------------

@jax.jit
def _single_step(state, batch, key):
  return step_lib.train_step(state, dict(batch, image=parallel.to_inputs(batch["image"],
                                                                         jnp.float64)), key)


def _pmapped_step(model, state, batch, key):
  state = jax.tree_util.tree_map(jnp.copy, state)  # The pmapped step donates its input.
  pstate = state.replace(apply_fn=model.clone(axis_name=parallel.AXIS).apply)
  train, _ = parallel.pmapped_steps(dtype=jnp.float64)
  sharded = jax.tree_util.tree_map(lambda x: x.reshape(8, B // 8, *x.shape[1:]), batch)
  return train(pstate, loop.train_sums(), sharded, key)


def _updates(before, after):
  return np.concatenate([np.ravel(np.asarray(a) - b) for b, a in
                         zip(before, jax.tree_util.tree_leaves(after.params))])


def test_dropout_masks_do_not_depend_on_the_device_layout():
  """Example i of the global batch draws the same mask on 8 devices x 2 as on 1 x 16."""
  from rethinking.models import layers  # pylint: disable=g-import-not-at-top
  x, key = np.ones((B, 64), np.float32), jax.random.PRNGKey(7)
  one = jax.jit(lambda x: layers.ExampleDropout(0.5).apply(
      {}, x, deterministic=False, rngs={"dropout": key}))(x)
  eight = jax.pmap(lambda x: layers.ExampleDropout(0.5, axis_name=parallel.AXIS).apply(
      {}, x, deterministic=False, rngs={"dropout": key}), axis_name=parallel.AXIS)(
          x.reshape(8, B // 8, 64))
  np.testing.assert_array_equal(np.asarray(eight).reshape(B, 64), np.asarray(one))
  kept = np.asarray(one) != 0
  assert set(np.unique(np.asarray(one))) == {0.0, 2.0}  # Kept units scaled by 1 / 0.5.
  assert 0.4 < kept.mean() < 0.6 and len({row.tobytes() for row in kept}) == B


@pytest.mark.parametrize("model_name", ["mlp_1x512"])  # inception_small: tests/test_multihost.py.
def test_pmapped_step_with_dropout_equals_single_device_step(model_name):
  """8 devices = 1 device with dropout on (rate 0.5), in float64 as the test above."""
  with jax.enable_x64(True):
    model, state, batch = _setup(model_name, jnp.float64, dropout_rate=0.5)
    before = [np.asarray(x) for x in jax.tree_util.tree_leaves(state.params)]
    want, want_sums = _single_step(state, batch, jax.random.PRNGKey(1))
    other, _ = _single_step(state, batch, jax.random.PRNGKey(2))  # Other masks.
    got, got_sums = _pmapped_step(model, state, batch, jax.random.PRNGKey(1))
  want_update = _updates(before, want)
  error = np.linalg.norm(_updates(before, got) - want_update) / np.linalg.norm(want_update)
  masks_matter = (np.linalg.norm(_updates(before, other) - want_update)
                  / np.linalg.norm(want_update))
  assert error <= 1e-5 and masks_matter > 1e-2, (error, masks_matter)
  np.testing.assert_allclose(got_sums["loss"], want_sums["loss"], rtol=1e-5)


def test_per_device_batch_norm_statistics():
  """bn_sync=False: each device normalizes by its own 2 examples, as 8 separate
  single-device steps would; the step still averages their gradients and running
  statistics (one logical state). Linear in the gradients at the first step (the
  momentum trace starts at zero), so the update is the mean of the 8 shards' updates."""
  with jax.enable_x64(True):
    model, state, batch = _setup("inception_small", jnp.float64, bn_sync=False)
    before = [np.asarray(x) for x in jax.tree_util.tree_leaves(state.params)]
    shards = [_single_step(state, {k: v[2 * d:2 * d + 2] for k, v in batch.items()},
                           jax.random.PRNGKey(1)) for d in range(8)]
    got, got_sums = _pmapped_step(model, state, batch, jax.random.PRNGKey(1))
    synced, _ = _pmapped_step(model.clone(bn_sync=True), state, batch, jax.random.PRNGKey(1))
  want_update = np.mean([_updates(before, s) for s, _ in shards], axis=0)
  error = np.linalg.norm(_updates(before, got) - want_update) / np.linalg.norm(want_update)
  global_bn = (np.linalg.norm(_updates(before, synced) - want_update)
               / np.linalg.norm(want_update))
  assert error <= 1e-5 and global_bn > 1e-2, (error, global_bn)
  np.testing.assert_allclose(got_sums["loss"], sum(s["loss"] for _, s in shards), rtol=1e-9)
  for got_leaf, *shard_leaves in zip(jax.tree_util.tree_leaves(got.batch_stats),
                                     *(jax.tree_util.tree_leaves(s.batch_stats)
                                       for s, _ in shards)):
    np.testing.assert_allclose(got_leaf, np.mean(shard_leaves, axis=0), rtol=1e-9, atol=1e-12)


def test_device_batches_place_each_slice_without_a_host_restack(monkeypatch):
  batches = [{"image": np.full((8, 2, 4, 4, 3), i, np.uint8) + np.arange(8, dtype=np.uint8)
              .reshape(8, 1, 1, 1, 1), "label": np.arange(16, dtype=np.int32).reshape(8, 2) + i}
             for i in range(3)]

  def no_stack(*args, **kwargs):
    raise AssertionError("a host re-stack (np.stack) of the batch")
  monkeypatch.setattr(np, "stack", no_stack)
  placed = list(parallel.device_batches(iter(batches), size=2))
  assert len(placed) == 3
  for host, device in zip(batches, placed):
    for key in host:
      assert device[key].shape == host[key].shape
      for shard in device[key].addressable_shards:
        d = jax.local_devices().index(shard.device)
        np.testing.assert_array_equal(np.asarray(shard.data)[0], host[key][d])
