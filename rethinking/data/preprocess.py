"""Image preprocessing and augmentation on the device, in JAX (Appendix A and E).

Images arrive as uint8 (or float32 on the 0..255 scale for gaussian pixels) and
are turned into the network's input here, inside the jitted step, so the host
only ever holds and moves uint8:

  /255 -> [rotate] -> crop to `image_size` (center, or random) -> [flip]
       -> per-image standardization (tf.image.per_image_standardization).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

AUGMENTATIONS = ("none", "crop", "crop_flip", "full")


def per_image_standardization(x: jax.Array) -> jax.Array:
  """(x - mean) / max(std, 1/sqrt(num_elements)) per image, as TensorFlow's op."""
  axes = tuple(range(1, x.ndim))
  n = jnp.asarray(x[0].size, x.dtype)
  mean = jnp.mean(x, axis=axes, keepdims=True)
  std = jnp.std(x, axis=axes, keepdims=True)
  return (x - mean) / jnp.maximum(std, jax.lax.rsqrt(n))


def center_crop(x: jax.Array, size: int) -> jax.Array:
  """Crops the central size x size window of a batch [N, H, W, C]."""
  top, left = (x.shape[1] - size) // 2, (x.shape[2] - size) // 2
  return x[:, top:top + size, left:left + size]


def random_crop(rng: jax.Array, x: jax.Array, size: int) -> jax.Array:
  """A uniformly placed size x size window per image (no padding, as the paper)."""
  n, h, w, c = x.shape
  tops = jax.random.randint(jax.random.fold_in(rng, 0), (n,), 0, h - size + 1)
  lefts = jax.random.randint(jax.random.fold_in(rng, 1), (n,), 0, w - size + 1)
  crop = lambda img, t, l: jax.lax.dynamic_slice(img, (t, l, 0), (size, size, c))
  return jax.vmap(crop)(x, tops, lefts)


def random_flip(rng: jax.Array, x: jax.Array) -> jax.Array:
  """Flips each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(rng, 0.5, (x.shape[0], 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1], x)


def random_rotate(rng: jax.Array, x: jax.Array, max_degrees: float) -> jax.Array:
  """Rotates each image by a uniform angle in [-max_degrees, max_degrees].

  Bilinear interpolation about the image center; pixels from outside the image
  are 0 (black), as tf.contrib.image.rotate did.
  """
  n, h, w, _ = x.shape
  angles = jnp.deg2rad(jax.random.uniform(rng, (n,), minval=-max_degrees, maxval=max_degrees))
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - (h - 1) / 2,
                            jnp.arange(w, dtype=jnp.float32) - (w - 1) / 2, indexing="ij")

  def rotate_one(img, angle):
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # Inverse map: where each output pixel comes from in the input.
    src_r = cos * rows - sin * cols + (h - 1) / 2
    src_c = sin * rows + cos * cols + (w - 1) / 2
    sample = lambda channel: jax.scipy.ndimage.map_coordinates(
        channel, [src_r, src_c], order=1, mode="constant", cval=0.0)
    return jax.vmap(sample, in_axes=2, out_axes=2)(img)

  return jax.vmap(rotate_one)(x, angles)


def preprocess(images: jax.Array, *, image_size: int, augment: str = "none",
               rng: jax.Array | None = None, rotation_degrees: float = 25.0,
               dtype=jnp.float32) -> jax.Array:
  """Turns a batch of raw images into network inputs.

  Args:
    images: [N, H, W, C], uint8 or float on the 0..255 scale.
    image_size: the crop size (28 for the paper's CIFAR-10).
    augment: one of AUGMENTATIONS; "none" is the evaluation path (center crop).
    rng: required when augment != "none".
    rotation_degrees: the maximum rotation for augment="full".
    dtype: the output dtype (bfloat16 for half-precision compute).

  Returns:
    float [N, image_size, image_size, C], standardized per image.
  """
  x = images.astype(jnp.float32) / 255.0
  if augment == "none":
    x = center_crop(x, image_size)
  else:
    rot_rng, crop_rng, flip_rng = jax.random.split(rng, 3)
    if augment == "full":
      x = random_rotate(rot_rng, x, rotation_degrees)
    x = random_crop(crop_rng, x, image_size)
    if augment in ("crop_flip", "full"):
      x = random_flip(flip_rng, x)
  return per_image_standardization(x).astype(dtype)
