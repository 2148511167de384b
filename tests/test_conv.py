"""profile_ops.im2col_conv, the alternative the per-op profile times against XLA's conv,
computes the same convolution (else its timings would compare different work)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from rethinking.profile_ops import im2col_conv

# (kernel, stride, padding) of the convs in alexnet_small, inception_small and inception_v3.
SHAPES = [((1, 1), 1, "SAME"), ((1, 1), 1, "VALID"), ((3, 3), 1, "SAME"),
          ((3, 3), 2, "SAME"), ((3, 3), 2, "VALID"), ((3, 3), 1, "VALID"),
          ((5, 5), 1, "SAME"), ((5, 5), 1, "VALID"), ((1, 7), 1, "SAME"), ((7, 1), 1, "SAME")]


@pytest.mark.parametrize("kernel,stride,padding", SHAPES)
def test_values_and_gradients_equal_lax_conv_in_float64(kernel, stride, padding):
  rng = np.random.default_rng(0)
  strides = (stride, stride)

  def reference(x, k):
    return lax.conv_general_dilated(x, k, strides, padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  with jax.enable_x64(True):
    # Odd, unequal sizes and channels: a transposed or misordered reshape shows.
    x = jnp.asarray(rng.standard_normal((2, 9, 11, 5)))
    k = jnp.asarray(rng.standard_normal((*kernel, 5, 7)))
    cotangent = jnp.asarray(rng.standard_normal(reference(x, k).shape))
    results = []
    for fn in (lambda x, k: im2col_conv(x, k, strides, padding), reference):
      y, vjp = jax.vjp(fn, x, k)
      results.append((y, *vjp(cotangent)))
  for got, want in zip(*results):
    assert got.dtype == jnp.float64 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
