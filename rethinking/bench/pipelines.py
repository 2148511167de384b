"""Input pipelines alone, without a model: the CIFAR batches gathered (and augmented) on the
device, and the ImageNet tf.data path (JPEG decode, crop, flip) on generated files, with the
CPU cores it needs per accelerator.
"""

from __future__ import annotations

import functools
import math
import pathlib
import resource
import time
from typing import Any

import numpy as np

from rethinking.bench import timing
from rethinking.bench.timing import Budget


def bench_cifar_pipeline(batch_size: int, budget: Budget, image_size: int = 28,
                         augments=("none", "crop_flip", "full")) -> dict[str, Any]:
  """The CIFAR input pipeline alone: `train.train_batch` on the device, no model.

  The training path's function and inputs (`prepare_inputs` for augment='none', raw
  uint8 images otherwise); 16 batches per jitted call, unrolled, each returned (as
  it is materialized for the model in the train step). Unrolled, not in a loop:
  XLA's CPU backend runs even a gather ~3x slower inside one; 16 per call, so the
  call's dispatch and synchronization (~0.1 ms here) do not count as pipeline.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rethinking import train  # pylint: disable=g-import-not-at-top
  from rethinking.data import in_memory  # pylint: disable=g-import-not-at-top

  n, per_call = 50_000, 16
  raw = jnp.asarray(np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
  y = jnp.zeros((n,), jnp.int32)
  perm = in_memory.epoch_permutation(jax.random.PRNGKey(0), 0, n)
  key = jax.random.PRNGKey(1)
  out = {"batch_size": batch_size, "dataset_images": n}
  for augment in augments:
    x = (train.prepare_inputs(raw, image_size=image_size, dtype=jnp.float32)
         if augment == "none" else raw)
    batch = functools.partial(
        train.train_batch, batch_size=batch_size,
        steps_per_epoch=in_memory.steps_per_epoch(n, batch_size), image_size=image_size,
        augment=augment, rotation_degrees=25.0, dtype=jnp.float32)
    run = jax.jit(lambda x, perm, start, batch=batch: [
        batch(x, y, perm, start + i, key)["image"] for i in range(per_call)])
    counter = iter(range(0, 10**9, per_call))
    t = timing.time_calls(lambda: run(x, perm, next(counter)), max(budget.steps // 2, 3), 1,
                          budget.max_seconds, budget.min_seconds / 2)
    out[augment] = t.row(batch_size * per_call, per_call)
    del x
  return out


def write_jpeg_folder(root: pathlib.Path, per_class: int, classes: int = 2,
                      scale: float = 1.0) -> None:
  """An ImageFolder of ImageNet-sized JPEGs (about 500x375 x scale) with smooth random content."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split in ("train", "validation"):
    for c in range(classes):
      folder = root / split / f"class{c}"
      folder.mkdir(parents=True)
      for i in range(per_class):
        h, w = (int(scale * d) for d in (rng.integers(330, 420), rng.integers(450, 550)))
        small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        noise = rng.integers(-12, 13, (h, w, 3))
        pixels = np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{c}_{i}.JPEG", quality=90)


def bench_imagenet_pipeline(image_size: int, batch_size: int, num_images: int,
                            tmp: pathlib.Path, budget: Budget, *, jpeg_scale: float = 1.0,
                            accelerator_images_per_s: int = 2000) -> dict[str, Any]:
  """Images/s of `data.imagenet.ImageNetInput.train_batches` (decode, crop, flip, batch),
  and the CPU cores that feed accelerators training at `accelerator_images_per_s` each."""
  try:
    from rethinking.data import imagenet  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return {"skipped": f"rethinking.data.imagenet is not importable ({e})"}
  root = tmp / "jpegs"
  if not root.exists():
    write_jpeg_folder(root, per_class=max(num_images // 2, batch_size), scale=jpeg_scale)
  pipeline = imagenet.ImageNetInput(
      str(root), data_dir=None, image_size=image_size, per_device_batch=batch_size,
      eval_per_device_batch=batch_size, augment=True, corruption="none", corrupt_prob=0.0,
      seed=0, process_index=0, process_count=1, local_device_count=1)
  batches, epoch, times = 0, 0, []
  it = iter(pipeline.train_batches(epoch))
  next(it)  # Builds the tf.data graph and fills the prefetch buffer.
  cpu_start = _cpu_seconds()
  start = time.perf_counter()
  while batches < max(budget.steps, 3) and time.perf_counter() - start < budget.max_seconds:
    t = time.perf_counter()
    try:
      next(it)
    except StopIteration:
      epoch += 1
      it = iter(pipeline.train_batches(epoch))
      continue
    times.append(time.perf_counter() - t)
    batches += 1
  elapsed = sum(times)
  # tf.data's threads run in this process: its CPU time over the loop is the input's
  # cost (the prefetched batches it already held when timing started bias this ~1%).
  per_core = batches * batch_size / max(_cpu_seconds() - cpu_start, 1e-9)
  rate = accelerator_images_per_s
  return {"image_size": image_size, "batch_size": batch_size, "files": 2 * len(list(
      (root / "train" / "class0").iterdir())), "batches": batches,
          "images_per_s": batches * batch_size / elapsed, "augment": True,
          "images_per_cpu_core_s": per_core, "accelerator_images_per_s": rate,
          "cores_needed": {str(n): math.ceil(n * rate / per_core) for n in (1, 8)},
          "path": "data.imagenet.ImageNetInput.train_batches (ImageFolder, JPEG)"}


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime
