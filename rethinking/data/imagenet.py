"""The ImageNet input pipeline: tf.data, sharded by process, for pmapped training.

Sources (`dataset`):
  imagenet2012       TFDS, built from the official archives in TFDS's manual_dir
                     (`<data_dir>/downloads/manual/ILSVRC2012_img_{train,val}.tar`).
  <any TFDS name>    another TFDS image classification dataset (features image, label).
  <directory>        ImageFolder layout: `<dir>/train/<class>/*.JPEG` and
                     `<dir>/validation/<class>/*`; classes are the sorted names of the
                     subdirectories of train/ (JPEG, PNG, BMP and GIF files).

Each process reads only its slice: a contiguous range of the TFDS split
(`train[a:b]`, whose records TFDS already shuffled when it built the dataset), or
every process_count-th file of the sorted file list (so every slice has every
class). Batches are `[local_devices, per_device_batch, ...]` and stay uint8 until
the device.

Determinism. An epoch's order is a pure function of (seed, epoch) and the process
layout: files follow a seeded numpy permutation; TFDS records a seeded file
shuffle, a deterministic interleave and a seeded shuffle buffer. Augmentation uses
stateless random ops keyed by (seed, epoch, position in the epoch), so resuming at
step k of an epoch (`train_batches(epoch, start_step=k)`) skips k batches of
*undecoded* records and yields exactly what an uninterrupted epoch would have.

Random and partial labels. The label of an image is a pure function of its
identity (the path below the ImageFolder root, or TFDS's `file_name` feature,
falling back to `tfds_id`) and the seed, computed inside tf.data with FarmHash
Fingerprint64 (`tf.strings.to_hash_bucket_fast`, stable across platforms and
releases): u = hash(seed, 'select', id) / 2^53 is uniform in [0, 1), and the image
gets the random class hash(seed, 'label', id) mod C when u < p (p = 1 for
random_labels). It is the same in every epoch, on every host, after restarts and
under any sharding, needs no table, and a sweep over p is nested (the images
corrupted at p are corrupted, identically, at every p' > p). Validation labels
stay clean.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Callable, Iterator

from absl import logging
import jax
import numpy as np
import tensorflow as tf

from rethinking.data.arrays import balanced_subset


def _hide_accelerators() -> None:
  """Keeps TensorFlow off the GPUs, which belong to JAX."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialized its devices; nothing more can be done.
    logging.warning("TensorFlow's devices were initialized before rethinking.data.imagenet "
                    "was imported; it may hold GPU memory")


_hide_accelerators()

# The map functions are plain TF ops with Python-level branching: tracing them
# through autograph only costs time (and warns about lambdas).
_no_autograph = tf.autograph.experimental.do_not_convert

CORRUPTIONS = ("none", "partial_labels", "random_labels")
MIN_IMAGE_SIZE = 75  # Inception V3's smallest input.
IMAGENET_ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif")
FOLDER_LAYOUT = ("<dir>/train/<class>/*.JPEG and <dir>/validation/<class>/*.JPEG "
                 "(classes = sorted subdirectory names of train/)")
CROP_FRACTION = 0.875  # TF's Inception evaluation crop.
SHUFFLE_BATCHES = 16  # TFDS shuffle buffer, in local batches (flax's imagenet example).
_U_BUCKETS = 2**53  # Exactly representable in float64: u is uniform on a 2^-53 grid.


def is_image_folder(dataset: str) -> bool:
  """Whether `dataset` is a local directory with train/ and validation/ subdirectories."""
  root = os.path.expanduser(dataset)
  return all(os.path.isdir(os.path.join(root, s)) for s in ("train", "validation"))


def corrupt_labels(ids: tf.Tensor, labels: tf.Tensor, *, num_classes: int, corruption: str,
                   corrupt_prob: float, seed: int) -> tf.Tensor:
  """The training labels after a label corruption, from the images' identities.

  Args:
    ids: string tensor, one identity per image (file name or path).
    labels: int32 tensor of the same shape, the true labels.
    num_classes: C; random classes are uniform over 0..C-1 (the true one included).
    corruption: one of CORRUPTIONS.
    corrupt_prob: p for partial_labels (random_labels uses 1).
    seed: the run's seed.

  Returns:
    int32 labels: hash(seed, 'label', id) mod C where hash(seed, 'select', id) / 2^53 < p,
    the true label elsewhere.
  """
  if corruption == "none":
    return labels
  prob = 1.0 if corruption == "random_labels" else corrupt_prob
  u = tf.cast(_hash(ids, seed, "select", _U_BUCKETS), tf.float64) / _U_BUCKETS
  random = tf.cast(_hash(ids, seed, "label", num_classes), tf.int32)
  return tf.where(u < prob, random, labels)


def _hash(ids: tf.Tensor, seed: int, tag: str, buckets: int) -> tf.Tensor:
  return tf.strings.to_hash_bucket_fast(tf.strings.join([f"{seed}:{tag}:", ids]), buckets)


def _derived_seed(seed: int, *words: int | str) -> int:
  """A 31-bit seed for (seed, words): independent streams for each epoch and purpose."""
  ints = [w if isinstance(w, int) else int.from_bytes(w.encode(), "little") for w in words]
  return int(np.random.SeedSequence([seed, *ints]).generate_state(1)[0] >> 1)


# --- Decoding and cropping -------------------------------------------------------------

def _central_window(shape: tf.Tensor):
  """The window of tf.image.central_crop(image, CROP_FRACTION) for an [H, W, C] shape."""
  hw = tf.cast(shape[:2], tf.float64)
  start = tf.cast((hw - hw * CROP_FRACTION) / 2, tf.int32)
  size = shape[:2] - 2 * start
  return start[0], start[1], size[0], size[1]


def _random_window(seed: tf.Tensor):
  """Inception's random-resized crop: 8-100% of the area, aspect ratio 3/4-4/3.

  The box is the whole image, so min_object_covered is a lower bound on the area too:
  0.08 keeps the documented range (flax's 0.1 makes it 10-100%). After 10 failed
  draws the whole image is used.
  """
  def window(shape):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.08, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    return begin[0], begin[1], size[0], size[1]
  return window


def _decode_window(data: tf.Tensor, window: Callable) -> tf.Tensor:
  """Decodes the window (top, left, height, width) = window(shape) of an encoded image.

  JPEGs decode only the window (most of the cost of a random-resized crop is
  decoding pixels that are thrown away); PNG, BMP and GIF decode whole.
  """
  def jpeg():
    top, left, h, w = window(tf.image.extract_jpeg_shape(data))
    return tf.image.decode_and_crop_jpeg(data, tf.stack([top, left, h, w]), channels=3)

  def other():
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    top, left, h, w = window(tf.shape(image))
    return image[top:top + h, left:left + w]

  return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
  image = tf.image.resize(image, [size, size], method="bilinear")
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def eval_image(data: tf.Tensor, image_size: int) -> tf.Tensor:
  """Central 87.5% crop, resized to image_size x image_size (TF's Inception eval), uint8."""
  return _resize(_decode_window(data, _central_window), image_size)


def train_image(data: tf.Tensor, image_size: int, seed: tf.Tensor) -> tf.Tensor:
  """Random-resized crop and left-right flip, keyed by a stateless seed [2], uint8."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = _resize(_decode_window(data, _random_window(crop_seed)), image_size)
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


# --- Sources: one process's records of a split, before decoding ----------------------------

@dataclasses.dataclass(frozen=True)
class _Slice:
  """A process's part of a split.

  Attributes:
    records: order_seed -> the slice's records, dicts with `id`, `label` and `path`
      (files) or `encoded` (TFDS); order_seed=None keeps the stored order.
    total: examples in the split over all processes (slices differ by at most one).
  """

  records: Callable[[int | None], tf.data.Dataset]
  total: int


def _even_range(n: int, index: int, count: int) -> tuple[int, int]:
  """The index-th of `count` contiguous ranges covering 0..n-1, the first n % count one longer."""
  base, extra = divmod(n, count)
  start = index * base + min(index, extra)
  return start, start + base + (index < extra)


class _FolderSource:
  """An ImageFolder directory: file lists in Python, reads in tf.data."""

  def __init__(self, root: str, num_train: int, seed: int):
    self.root = os.path.expanduser(root)
    train_dir = os.path.join(self.root, "train")
    self.classes = sorted(d for d in os.listdir(train_dir)
                          if os.path.isdir(os.path.join(train_dir, d)))
    if not self.classes:
      raise ValueError(f"config.dataset={root!r}: no class subdirectories in {train_dir}; "
                       f"expected {FOLDER_LAYOUT}")
    self.num_classes = len(self.classes)
    self.files = {"train": self._list("train"), "validation": self._list("validation")}
    if num_train:
      paths, labels = self.files["train"]
      keep = balanced_subset(labels, num_train, seed)
      self.files["train"] = ([paths[i] for i in keep], labels[keep])

  def _list(self, split: str) -> tuple[list[str], np.ndarray]:
    """Sorted image paths relative to the root (the image ids), and their class indices."""
    split_dir = os.path.join(self.root, split)
    index = {c: i for i, c in enumerate(self.classes)}
    paths, labels = [], []
    for name in sorted(os.listdir(split_dir)):
      if not os.path.isdir(os.path.join(split_dir, name)):
        continue
      if name not in index:
        raise ValueError(f"config.dataset={self.root!r}: {split}/{name} is not a class of "
                         f"train/; expected {FOLDER_LAYOUT}")
      found = []
      for parent, dirs, files in os.walk(os.path.join(split_dir, name), followlinks=True):
        dirs.sort()
        found += [os.path.relpath(os.path.join(parent, f), self.root).replace(os.sep, "/")
                  for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
      if not found and split == "train":
        raise ValueError(f"config.dataset={self.root!r}: no images in train/{name}; "
                         f"expected {FOLDER_LAYOUT}")
      paths += found
      labels += [index[name]] * len(found)
    if not paths:
      raise ValueError(f"config.dataset={self.root!r}: no images under {split_dir} "
                       f"({', '.join(IMAGE_EXTENSIONS)}); expected {FOLDER_LAYOUT}")
    return paths, np.asarray(labels, np.int32)

  def train_ids_and_labels(self):
    return self.files["train"]

  def slice(self, split: str, index: int, count: int, local_batch: int = 1) -> _Slice:
    """A process's part of a split.

    Shuffled (training): one global permutation per epoch, cut into global
    batches of count * local_batch, and this process takes its `local_batch`
    columns of each. The global batch at every step is therefore the same set of
    images whatever the process layout (1 process x 8 devices = 2 x 4), and each
    process still reads only its own files. Unshuffled (evaluation): strided.
    """
    paths, labels = self.files[split]
    paths, files = np.asarray(paths), np.asarray([os.path.join(self.root, p) for p in paths])

    def records(order_seed):
      if order_seed is None:
        mine = np.arange(index, len(paths), count)  # Strided: every slice has every class.
      else:
        perm = np.random.default_rng(order_seed).permutation(len(paths))
        usable = len(perm) // (count * local_batch) * count * local_batch
        mine = perm[:usable].reshape(-1, count, local_batch)[:, index].ravel()
      return tf.data.Dataset.from_tensor_slices(
          {"path": files[mine], "id": paths[mine], "label": labels[mine]})

    return _Slice(records, len(paths))


class _TfdsSource:
  """A TFDS image classification dataset, read as encoded images."""

  def __init__(self, name: str, data_dir: str | None, num_train: int, shuffle_buffer: int):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self._tfds = tfds
    try:
      self.builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises DatasetNotFoundError with a list of names.
      raise ValueError(f"config.dataset={name!r}: neither an image folder ({FOLDER_LAYOUT}) "
                       f"nor a TFDS dataset ({type(e).__name__}: "
                       f"{str(e).splitlines()[0]})") from e
    _prepare(self.builder, name)
    info = self.builder.info
    self.image_key, self.label_key = info.supervised_keys or ("image", "label")
    self.num_classes = info.features[self.label_key].num_classes
    self.id_key = "file_name" if "file_name" in info.features else "tfds_id"
    # Before a real build, or under tfds.testing.mock_data, TFDS knows no splits.
    known = set(info.splits.keys())
    self.eval_split = "validation" if "validation" in known or not known else "test"
    for split in ("train", self.eval_split):
      if known and split not in known:
        raise ValueError(f"config.dataset={name!r}: TFDS has no {split!r} split "
                         f"(it has {sorted(known)}) in {self.builder.data_dir}")
    self.sizes = {"train": self._num_examples("train"),
                  "validation": self._num_examples(self.eval_split)}
    if num_train:
      if num_train > self.sizes["train"]:
        raise ValueError(f"config.num_train={num_train}: the training set has only "
                         f"{self.sizes['train']} images")
      self.sizes["train"] = num_train
    self.shuffle_buffer = shuffle_buffer

  def _num_examples(self, split: str) -> int:
    if split in self.builder.info.splits:
      return self.builder.info.splits[split].num_examples
    return int(self._read(split, None).cardinality())

  def _read(self, split: str, order_seed: int | None) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    read_config = self._tfds.ReadConfig(shuffle_seed=order_seed, options=options,
                                        add_tfds_id=self.id_key == "tfds_id",
                                        interleave_cycle_length=16)
    return self.builder.as_dataset(
        split=split, shuffle_files=order_seed is not None, read_config=read_config,
        decoders={self.image_key: self._tfds.decode.SkipDecoding()})

  def train_ids_and_labels(self):
    return None  # Reading 1.28M records to hash ids is too slow; see fingerprint.

  def slice(self, split: str, index: int, count: int, local_batch: int = 1) -> _Slice:
    """A contiguous range per process (TFDS reads whole shards fast; the order then
    depends on the process layout, unlike image folders)."""
    del local_batch
    total = self.sizes[split]
    start, end = _even_range(total, index, count)
    name = self.eval_split if split == "validation" else split

    @_no_autograph
    def fields(ex):
      return {"encoded": ex[self.image_key], "id": ex[self.id_key],
              "label": tf.cast(ex[self.label_key], tf.int32)}

    def records(order_seed):
      ds = self._read(f"{name}[{start}:{end}]", order_seed).map(fields)
      return ds if order_seed is None else ds.shuffle(self.shuffle_buffer, seed=order_seed)

    return _Slice(records, total)

  def identity(self) -> dict:
    return {"tfds": self.builder.info.full_name, "num_train": self.sizes["train"]}


def _prepare(builder, name: str) -> None:
  """Builds a TFDS dataset that is not built yet; for imagenet2012, from the manual archives."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if builder.is_prepared():
    return
  manual_dir = os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")
  missing = []
  if builder.name.startswith("imagenet2012"):
    missing = [f for f in IMAGENET_ARCHIVES
               if not tf.io.gfile.exists(os.path.join(manual_dir, f))]
  if missing and tf.io.gfile.exists(manual_dir):
    # TFDS would build the dataset without the missing split, and keep it.
    raise _missing_archives(name, builder, manual_dir, missing)
  logging.info("Building %s in %s (manual_dir %s)", builder.name, builder.data_dir, manual_dir)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except Exception as e:  # pylint: disable=broad-except
    if missing:
      raise _missing_archives(name, builder, manual_dir, missing) from e
    raise


def _missing_archives(name: str, builder, manual_dir: str, missing: list[str]) -> ValueError:
  return ValueError(
      f"config.dataset={name!r}: TFDS builds {builder.name} from the official archives, and "
      f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing from its "
      f"manual_dir {manual_dir}. Download {' and '.join(IMAGENET_ARCHIVES)} from "
      "https://image-net.org/download-images (registration required) into that directory "
      "(the first run then builds the dataset, for hours), set config.data_dir to a TFDS "
      f"data_dir where {builder.name} is already built, or use an ImageFolder directory "
      f"({FOLDER_LAYOUT})")


# --- The pipeline ----------------------------------------------------------------------------

class ImageNetInput:
  """Per-process training and evaluation batches for a pmapped step.

  Attributes:
    num_classes: classes in the dataset.
    num_train: training images (all processes; after num_train's subset).
    num_eval: validation images (all processes).
    steps_per_epoch: num_train // global batch; the remainder of each process's
      shuffled slice is dropped in that epoch.
    eval_steps: batches every process yields in `eval_batches()`.
    fingerprint: sha256 identifying the (corrupted) training set: for a folder, of
      its sorted image ids with their final labels; for TFDS, of the dataset's full
      name and version, the images used and the label rule's parameters.
  """

  def __init__(self, dataset: str, *, data_dir: str | None, image_size: int,
               per_device_batch: int, eval_per_device_batch: int, augment: bool,
               corruption: str, corrupt_prob: float, seed: int,
               num_classes: int | None = None, process_index: int | None = None,
               process_count: int | None = None, local_device_count: int | None = None,
               num_train: int = 0, min_image_size: int = MIN_IMAGE_SIZE):
    """Lists the data and checks every argument; reads no image.

    Args:
      dataset: 'imagenet2012', another TFDS name, or an ImageFolder directory.
      data_dir: TFDS data_dir (None = TFDS's default); unused for folders.
      image_size: output side S (299 for Inception V3).
      per_device_batch: training examples per device per step.
      eval_per_device_batch: evaluation examples per device per batch.
      augment: random-resized crop + flip for training; else the evaluation crop.
      corruption: none | partial_labels | random_labels.
      corrupt_prob: p for partial_labels.
      seed: fixes the label corruption, the subset, the order and the augmentation.
      num_classes: if given, must equal the dataset's number of classes.
      process_index, process_count, local_device_count: the process layout
        (default: JAX's); global batch = per_device_batch * local_device_count *
        process_count.
      num_train: 0 = every training image; else a subset of that many (folders:
        seeded and class-balanced; TFDS: the first n records, which TFDS stored
        shuffled).
      min_image_size: the smallest image_size accepted (Inception V3's 75).

    Raises:
      ValueError: a bad argument or dataset, with the fix.
    """
    _hide_accelerators()
    if corruption not in CORRUPTIONS:
      raise ValueError(f"config.corruption={corruption!r} is not supported for ImageNet; "
                       f"use one of {', '.join(CORRUPTIONS)} (pixel corruptions are "
                       "implemented for the in-memory CIFAR-10/MNIST datasets only)")
    if not 0.0 <= corrupt_prob <= 1.0:
      raise ValueError(f"config.corrupt_prob={corrupt_prob!r}: must be a probability in [0, 1]")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"config.seed={seed!r}: must be a non-negative integer")
    if image_size < min_image_size:
      raise ValueError(f"config.image_size={image_size} is below Inception V3's minimum "
                       f"input of {min_image_size}x{min_image_size}; set "
                       f"--config.image_size={min_image_size} or more (299 in the paper)")
    for field, value in (("per-device batch", per_device_batch),
                         ("per-device eval batch", eval_per_device_batch)):
      if value < 1:
        raise ValueError(f"{field} = {value}: the global batch must give every device at "
                         "least one example; raise config.batch_size / eval_batch_size")
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    self.local_device_count = (jax.local_device_count() if local_device_count is None
                               else local_device_count)
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(f"process_index={self.process_index} is not in "
                       f"0..{self.process_count - 1}")
    self.image_size, self.augment, self.seed = image_size, augment, int(seed)
    self.per_device_batch, self.eval_per_device_batch = per_device_batch, eval_per_device_batch
    self.corruption, self.corrupt_prob = corruption, float(corrupt_prob)
    local_batch = per_device_batch * self.local_device_count

    if is_image_folder(dataset):
      self._source = _FolderSource(dataset, num_train, self.seed)
    elif os.path.isabs(dataset) or dataset.startswith((".", "~")) or os.path.exists(dataset):
      raise ValueError(f"config.dataset={dataset!r}: not an image folder; expected "
                       f"{FOLDER_LAYOUT}")
    else:
      self._source = _TfdsSource(dataset, data_dir, num_train, SHUFFLE_BATCHES * local_batch)
    if num_classes is not None and num_classes != self._source.num_classes:
      raise ValueError(f"num_classes={num_classes}, but {dataset!r} has "
                       f"{self._source.num_classes} classes")
    self.num_classes = self._source.num_classes
    self._train = self._source.slice("train", self.process_index, self.process_count,
                                     local_batch)
    self._eval = self._source.slice("validation", self.process_index, self.process_count)
    self.num_train, self.num_eval = self._train.total, self._eval.total
    global_batch = local_batch * self.process_count
    self.steps_per_epoch = self.num_train // global_batch
    if self.steps_per_epoch == 0:
      raise ValueError(f"config.dataset={dataset!r} has {self.num_train} training images, "
                       f"fewer than one global batch of {global_batch}; lower "
                       "config.batch_size")
    self.eval_steps = self._eval_steps(self._eval)
    self.fingerprint = self._fingerprint()

  def _labels(self, record: dict, split: str) -> tf.Tensor:
    if split != "train":
      return record["label"]
    return corrupt_labels(record["id"], record["label"], num_classes=self.num_classes,
                          corruption=self.corruption, corrupt_prob=self.corrupt_prob,
                          seed=self.seed)

  def _fingerprint(self) -> str:
    ids_labels = self._source.train_ids_and_labels()
    h = hashlib.sha256(f"labels-v1 {self.corruption} {self.corrupt_prob} "
                       f"{self.seed} {self.num_classes}\n".encode())
    if ids_labels is None:
      h.update(json.dumps(self._source.identity(), sort_keys=True).encode())
      return h.hexdigest()
    ids, labels = ids_labels
    labels = self._labels({"id": tf.constant(ids), "label": tf.constant(labels)}, "train")
    h.update("".join(f"{i}\t{label}\n" for i, label in
                     sorted(zip(ids, labels.numpy().tolist()))).encode())
    return h.hexdigest()

  def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's training batches of `epoch`, from step-in-epoch `start_step`.

    Yields:
      {'image': uint8 [local_devices, per_device_batch, S, S, 3],
       'label': int32 [local_devices, per_device_batch]}, steps_per_epoch - start_step times.
    """
    if not 0 <= start_step <= self.steps_per_epoch:
      raise ValueError(f"start_step={start_step}: expected 0..{self.steps_per_epoch}")
    local_batch = self.per_device_batch * self.local_device_count
    ds = self._train.records(_derived_seed(self.seed, "order", epoch))
    # Positions are counted before the skip, so a resumed epoch decodes, crops and
    # flips every image as the uninterrupted epoch did.
    ds = ds.take(self.steps_per_epoch * local_batch).enumerate().skip(start_step * local_batch)
    key = _derived_seed(self.seed, "augment", epoch)
    global_batch = local_batch * self.process_count

    @_no_autograph
    def example(position, record):
      # The position in the *global* batch order keys the augmentation, so an image
      # is cropped the same way whatever the process layout.
      step, column = position // local_batch, position % local_batch
      position = step * global_batch + self.process_index * local_batch + column
      data = _read(record)
      if self.augment:
        image = train_image(data, self.image_size, tf.stack([tf.constant(key, tf.int64),
                                                             position]))
      else:
        image = eval_image(data, self.image_size)
      return {"image": image, "label": self._labels(record, "train")}

    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return self._batches(ds, self.per_device_batch)

  def eval_batches(self, split: str = "validation") -> Iterator[dict[str, np.ndarray]]:
    """This process's part of one pass over a split, every image exactly once overall.

    Every process yields `eval_steps` batches (for split='validation'); the last ones
    are padded with zero images of mask 0, so pmap collectives line up.

    Args:
      split: 'validation', or 'train' for an evaluation-mode pass over this
        process's training slice (all of it, with the training labels).

    Yields:
      {'image': uint8 [local_devices, eval_per_device_batch, S, S, 3],
       'label': int32 [local_devices, eval_per_device_batch],
       'mask': float32 [local_devices, eval_per_device_batch]}.
    """
    part = {"validation": self._eval, "train": self._train}[split]
    local_batch = self.eval_per_device_batch * self.local_device_count
    steps = self._eval_steps(part)

    @_no_autograph
    def example(record):
      return {"image": eval_image(_read(record), self.image_size),
              "label": self._labels(record, split), "mask": tf.constant(1.0)}

    ds = part.records(None).map(example, num_parallel_calls=tf.data.AUTOTUNE,
                                deterministic=True)
    pad = tf.data.Dataset.from_tensors(
        {"image": tf.zeros([self.image_size, self.image_size, 3], tf.uint8),
         "label": tf.constant(0, tf.int32), "mask": tf.constant(0.0)}).repeat()
    ds = ds.concatenate(pad).take(steps * local_batch)
    return self._batches(ds, self.eval_per_device_batch)

  def _eval_steps(self, part: _Slice) -> int:
    """Batches for the largest process slice, ceil(total / process_count) examples."""
    largest = math.ceil(part.total / self.process_count)
    return math.ceil(largest / (self.eval_per_device_batch * self.local_device_count))

  def _batches(self, ds: tf.data.Dataset, per_device: int) -> Iterator[dict[str, np.ndarray]]:
    devices = self.local_device_count

    @_no_autograph
    def split_devices(batch):
      return {k: tf.reshape(v, [devices, per_device, *v.shape[1:]]) for k, v in batch.items()}

    ds = ds.batch(devices * per_device, drop_remainder=True).map(split_devices)
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1  # Parallelism across images instead.
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _read(record: dict) -> tf.Tensor:
  """The encoded image of a record: read from disk (folders) or already in it (TFDS)."""
  return tf.io.read_file(record["path"]) if "path" in record else record["encoded"]
