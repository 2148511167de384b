"""Model zoo: exact parameter counts, the shared interface, LRN numerics, BatchNorm axes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rethinking.models import MODELS, get_model
from rethinking.models.layers import local_response_normalization

CIFAR_SHAPE = (28, 28, 3)
# Paper (Appendix A) and Keras InceptionV3 trainable-parameter counts.
PARAM_COUNTS = {
    "alexnet_small": 1_387_786,
    "inception_small": 1_649_402,
    "inception_small_nobn": 1_649_402,
    "mlp_1x512": 1_209_866,
    "mlp_3x512": 1_735_178,
    "inception_v3": 23_817_352,
}
HAS_BATCH_NORM = {"inception_small", "inception_v3"}
CIFAR_MODELS = sorted(set(PARAM_COUNTS) - {"inception_v3"})


def abstract_variables(model, shape):
  """Variable shapes from `init`, traced without computing anything."""
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False))


def normal(*shape, seed=1):
  """Standard-normal float32 inputs from numpy (jax.random's CPU compile is slow)."""
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def random_variables(model, shape, seed=0):
  """Variables of `model.init`'s shapes filled by numpy (He-normal kernels, zero biases).

  `model.init` itself is only traced (`abstract_variables`): compiling its random
  initializers costs tens of seconds per conv net on a CPU, the forward pass a few.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if leaf.ndim == 1:  # biases, BatchNorm offsets and statistics
      return np.full(leaf.shape, 1.0 if path[-1].key == "var" else 0.0, leaf.dtype)
    fan_in = np.prod(leaf.shape[:-1])
    return (rng.standard_normal(leaf.shape) * np.sqrt(2 / fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract_variables(model, shape))


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def apply(model, variables, x, train, **kwargs):
  """`model.apply` as the trainer calls it; returns (outputs, new batch_stats or None)."""
  if train and "batch_stats" in variables:
    out, state = model.apply(variables, x, train=True, mutable=["batch_stats"], **kwargs)
    return out, state["batch_stats"]
  return model.apply(variables, x, train=train, **kwargs), None


def test_registry_holds_every_model():
  assert sorted(MODELS) == sorted(PARAM_COUNTS)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_trainable_parameter_count_and_collections(name):
  num_classes = 1000 if name == "inception_v3" else 10
  shape = (299, 299, 3) if name == "inception_v3" else CIFAR_SHAPE
  variables = abstract_variables(get_model(name, num_classes=num_classes), shape)
  assert count(variables["params"]) == PARAM_COUNTS[name]
  assert ("batch_stats" in variables) == (name in HAS_BATCH_NORM)
  if name == "inception_v3":  # Keras: 23,851,784 parameters in all.
    assert count(variables["batch_stats"]) == 34_432


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
  model = get_model(name, dtype=jnp.bfloat16)
  variables = abstract_variables(model, CIFAR_SHAPE)
  assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
  x = jax.ShapeDtypeStruct((2, *CIFAR_SHAPE), jnp.float32)
  for train in (True, False):
    logits, stats = jax.eval_shape(lambda v, x: apply(model, v, x, train=train), variables, x)
    assert (logits.shape, logits.dtype) == ((2, 10), jnp.float32)
    assert (stats is not None) == (train and name in HAS_BATCH_NORM)


def test_bfloat16_forward_is_finite():
  """AlexNet's LRN, the one hand-written numeric layer, computes in float32 and casts back."""
  model = get_model("alexnet_small", dtype=jnp.bfloat16)
  x = normal(2, *CIFAR_SHAPE)
  logits, _ = jax.jit(lambda v, x: apply(model, v, x, train=True))(
      random_variables(model, CIFAR_SHAPE), x)
  assert np.all(np.isfinite(logits)) and np.any(logits != 0)


@pytest.mark.parametrize("name", ["mlp_1x512", "alexnet_small"])
def test_dropout_only_in_train_mode(name):
  x = normal(4, *CIFAR_SHAPE)
  model = get_model(name, dropout_rate=0.5)
  variables = random_variables(model, CIFAR_SHAPE)
  train = lambda seed: model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(seed)})
  no_dropout = get_model(name).apply(variables, x, train=True)
  assert not np.allclose(train(0), train(1))
  assert not np.allclose(train(0), no_dropout)
  np.testing.assert_array_equal(model.apply(variables, x, train=False), no_dropout)


def naive_tf_lrn(x, depth_radius, bias, alpha, beta):
  """tf.nn.local_response_normalization, literally, with numpy's clipped slices."""
  sqr_sum = np.zeros_like(x)
  for d in range(x.shape[-1]):
    sqr_sum[..., d] = np.sum(x[..., max(d - depth_radius, 0):d + depth_radius + 1] ** 2, axis=-1)
  return x / (bias + alpha * sqr_sum) ** beta


@pytest.mark.parametrize("radius,bias,alpha,beta", [(4, 1.0, 0.001 / 9, 0.75), (2, 2.0, 0.1, 0.5)])
def test_lrn_matches_tf_formula(radius, bias, alpha, beta):
  x = 10 * normal(2, 3, 3, 16).astype(np.float64)
  got = local_response_normalization(jnp.asarray(x, jnp.float32), radius, bias, alpha, beta)
  np.testing.assert_allclose(got, naive_tf_lrn(x, radius, bias, alpha, beta), rtol=1e-5)


def test_unknown_model_lists_known_names():
  with pytest.raises(ValueError, match="config.model='xyz': unknown model; known: alexnet_small, "
                     "inception_small, inception_small_nobn, inception_v3, mlp_1x512, mlp_3x512"):
    get_model("xyz")


def test_batch_norm_options_are_dropped_only_for_models_without_batch_norm():
  assert get_model("mlp_1x512", axis_name="batch", bn_momentum=0.9).num_classes == 10
  assert get_model("inception_small", axis_name="batch").axis_name == "batch"
  with pytest.raises(TypeError):
    get_model("mlp_1x512", aux_logits=True)


@pytest.mark.parametrize("height,width", [(74, 74), (75, 74), (32, 32)])
def test_inception_v3_rejects_small_inputs(height, width):
  with pytest.raises(ValueError, match="at least 75x75"):
    abstract_variables(get_model("inception_v3"), (height, width, 3))


def test_inception_v3_forward_at_minimum_size():
  model = get_model("inception_v3", num_classes=7)
  x = normal(2, 75, 75, 3)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      random_variables(model, (75, 75, 3)), x)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits)) and np.any(logits != 0)


def test_inception_v3_aux_head():
  """Parameter shapes do not depend on the input size, so the 299x299 count holds at 75x75."""
  model = get_model("inception_v3", num_classes=1000, aux_logits=True)
  variables = abstract_variables(model, (299, 299, 3))
  assert count(variables["params"]) == PARAM_COUNTS["inception_v3"] + 3_325_800
  for size in (299, 75):
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    train_out, _ = jax.eval_shape(lambda v, x: apply(model, v, x, train=True), variables, x)
    assert [(o.shape, o.dtype) for o in train_out] == [((2, 1000), jnp.float32)] * 2
  x = jax.ShapeDtypeStruct((2, 75, 75, 3), jnp.float32)
  eval_out, _ = jax.eval_shape(lambda v, x: apply(model, v, x, train=False), variables, x)
  assert (eval_out.shape, eval_out.dtype) == ((2, 1000), jnp.float32)


def test_batch_norm_statistics_span_the_mapped_axis():
  """Under vmap over 2 shards with axis_name set, each shard's update equals the full batch's.

  Were axis_name not reaching every BatchNorm, a shard would see only its own half.
  """
  x = normal(8, 8, 8, 3)
  single = get_model("inception_small")
  sharded = get_model("inception_small", axis_name="batch")
  variables = random_variables(single, x.shape[1:])

  def stats(x):
    full = apply(single, variables, x, train=True)[1]
    per_shard = jax.vmap(lambda x: apply(sharded, variables, x, train=True)[1],
                         axis_name="batch")(x.reshape(2, 4, *x.shape[1:]))
    return full, per_shard

  full, per_shard = jax.jit(stats)(x)
  for shard in range(2):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[shard], b, rtol=1e-4, atol=1e-6),
                 per_shard, full)


def test_per_op_profile_finds_every_layer():
  """rethinking.profile_ops cuts the traced forward pass into the layers it times, by
  op and named scope: every conv, pool and LRN of the small AlexNet, and no input
  gradient for the conv that reads the image."""
  from rethinking import profile_ops  # pylint: disable=g-import-not-at-top
  model = get_model("alexnet_small")
  leaves, tree = jax.tree.flatten(abstract_variables(model, CIFAR_SHAPE))
  jaxpr = jax.make_jaxpr(lambda *a: model.apply(jax.tree.unflatten(tree, a[:-1]), a[-1],
                                                train=True))(
      *leaves, jax.ShapeDtypeStruct((4, *CIFAR_SHAPE), jnp.float32)).jaxpr
  ops = [(kind, profile_ops.describe(kind, eqns), needs_dx)
         for kind, eqns, needs_dx in profile_ops.segments(jaxpr)]
  assert ops == [("conv", "conv 5x5/1   3->64  @28x28 padded", False),
                 ("max_pool", "max_pool 28x28x64", True), ("lrn", "lrn 14x14x64", True),
                 ("conv", "conv 5x5/1  64->64  @14x14 padded", True),
                 ("lrn", "lrn 14x14x64", True), ("max_pool", "max_pool 14x14x64", True)]
