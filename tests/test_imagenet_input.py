"""The ImageNet input pipeline on a tiny ImageFolder of real JPEGs and on mocked TFDS data.

Every image is a distinct flat color (levels 40 apart) plus mild noise, so a decoded,
cropped and resized image still tells which file it came from: the tests follow
individual images through shuffling, sharding, padding and label corruption.
"""

import collections
import io
import os
import re

import numpy as np
from PIL import Image
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from rethinking.data import imagenet  # pylint: disable=g-import-not-at-top

CLASSES = ("cat", "dog", "eel")
TRAIN_PER_CLASS, EVAL_PER_CLASS = 12, 5
NUM_TRAIN, NUM_EVAL = 3 * TRAIN_PER_CLASS, 3 * EVAL_PER_CLASS
SIZE = 75


def _color(i: int) -> np.ndarray:
  return 20 + 40 * np.array([i % 6, i // 6 % 6, i // 36])


def identify(image: np.ndarray) -> int:
  """Which image (by the index given to `_jpeg`) a decoded crop comes from."""
  r, g, b = np.round((image.reshape(-1, 3).mean(0) - 20) / 40).astype(int)
  return int(r + 6 * g + 36 * b)


def _jpeg(i: int, rng: np.random.Generator, fmt: str = "JPEG") -> bytes:
  """A random-size image of color `_color(i)` with +-8 noise, encoded."""
  h, w = rng.integers(60, 140, size=2)
  pixels = _color(i) + rng.integers(-8, 9, size=(h, w, 3))
  out = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(out, fmt, quality=95)
  return out.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """3 classes x 12 training and x 5 validation JPEGs; image i has color `_color(i)`.

  Returns (root, {index: true class}).
  """
  root = tmp_path_factory.mktemp("imagefolder")
  rng = np.random.default_rng(0)
  classes, i = {}, 0
  for split, per_class in (("train", TRAIN_PER_CLASS), ("validation", EVAL_PER_CLASS)):
    for c, name in enumerate(CLASSES):
      os.makedirs(root / split / name)
      for k in range(per_class):
        (root / split / name / f"{name}_{k}.JPEG").write_bytes(_jpeg(i, rng))
        classes[i], i = c, i + 1
  (root / "train" / "README.txt").write_text("not a class")
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  return str(root), classes


def make(dataset, **kwargs):
  args = dict(data_dir=None, image_size=SIZE, per_device_batch=2, eval_per_device_batch=2,
              augment=False, corruption="random_labels", corrupt_prob=0.0, seed=3,
              process_index=0, process_count=1, local_device_count=2)
  return imagenet.ImageNetInput(dataset, **{**args, **kwargs})


def examples(batch: dict):
  """The examples of a [devices, per_device, ...] batch, one dict each."""
  flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}
  return [dict(zip(flat, values)) for values in zip(*flat.values())]


def read(batches) -> list[tuple[int, int]]:
  """(image, label) of every example of training batches, in order."""
  return [(identify(ex["image"]), int(ex["label"])) for b in batches for ex in examples(b)]


def epoch_labels(batches) -> dict[int, int]:
  """{image: label} over training batches; fails if an image comes twice."""
  pairs = read(batches)
  seen = dict(pairs)
  assert len(seen) == len(pairs), "an image came twice in one epoch"
  return seen


def merged(inputs, fn) -> dict[int, int]:
  """epoch_labels over the batches of several processes' inputs, disjointness included."""
  out = {}
  for part in (epoch_labels(fn(x)) for x in inputs):
    assert not set(part) & set(out), "two processes read the same image"
    out.update(part)
  return out


def eval_images(inputs, split="validation"):
  """Counts of unmasked eval images over processes, their labels, batches per process."""
  counts, labels, num_batches = collections.Counter(), {}, []
  for x in inputs:
    batches = list(x.eval_batches(split))
    num_batches.append(len(batches))
    for b in batches:
      assert b["image"].shape == (x.local_device_count, x.eval_per_device_batch, SIZE, SIZE, 3)
      assert b["mask"].dtype == np.float32 and set(np.unique(b["mask"])) <= {0.0, 1.0}
      for ex in examples(b):
        if ex["mask"]:
          counts[identify(ex["image"])] += 1
          labels[identify(ex["image"])] = int(ex["label"])
        else:
          assert not ex["image"].any() and ex["label"] == 0  # Padding.
  return counts, labels, num_batches


def test_folder_batches_and_fixed_random_labels(folder):
  root, true_class = folder
  one = make(root)
  assert (one.num_classes, one.num_train, one.num_eval) == (3, NUM_TRAIN, NUM_EVAL)
  assert one.steps_per_epoch == NUM_TRAIN // 4 and one.eval_steps == 4  # ceil(15 / 4)
  batches = list(one.train_batches(0))
  assert len(batches) == one.steps_per_epoch
  for b in batches:
    assert b["image"].dtype == np.uint8 and b["image"].shape == (2, 2, SIZE, SIZE, 3)
    assert b["label"].dtype == np.int32 and b["label"].shape == (2, 2)

  epoch0 = epoch_labels(batches)
  assert sorted(epoch0) == list(range(NUM_TRAIN))  # 36 = 9 x 4: every image once.
  # Random labels: fixed per image across epochs, restarts and process layouts...
  epoch1, restarted = read(one.train_batches(1)), read(make(root).train_batches(1))
  two = [make(root, process_index=p, process_count=2, local_device_count=1) for p in range(2)]
  assert dict(epoch1) == epoch0
  assert merged(two, lambda x: x.train_batches(1)) == epoch0  # Global batch 4 = 2 x 1 x 2.
  # ... and so is the order, given (seed, epoch); another epoch has another order.
  assert restarted == epoch1 and [i for i, _ in epoch1] != [i for i, _ in read(batches)]
  # The labels are not the true ones (1 in 3 agree by chance); another seed redraws them.
  agree = np.mean([epoch0[i] == true_class[i] for i in epoch0])
  assert 0.1 < agree < 0.6
  reseeded = make(root, seed=4)
  assert epoch_labels(reseeded.train_batches(0)) != epoch0
  # The fingerprint follows the labels, not the object or the layout.
  assert one.fingerprint == two[1].fingerprint != reseeded.fingerprint
  assert one.fingerprint != make(root, corruption="none").fingerprint
  # num_train: a seeded, class-balanced subset.
  subset = epoch_labels(make(root, num_train=12, corruption="none").train_batches(0))
  assert collections.Counter(subset.values()) == {0: 4, 1: 4, 2: 4}
  assert all(subset[i] == true_class[i] for i in subset)


def test_folder_evaluation_covers_validation_once(folder):
  root, true_class = folder
  for layout in ([make(root)],  # 15 images in 4 batches of 2 x 2.
                 [make(root, process_index=p, process_count=2, local_device_count=1,
                       eval_per_device_batch=3) for p in range(2)]):  # 8 + 7 in 3 x 3 each.
    counts, labels, num_batches = eval_images(layout)
    assert counts == collections.Counter(range(NUM_TRAIN, NUM_TRAIN + NUM_EVAL))
    assert labels == {i: true_class[i] for i in counts}  # Validation labels stay clean.
    assert num_batches == [layout[0].eval_steps] * len(layout)
  assert [x.eval_steps for x in layout] == [3, 3]
  # An evaluation pass over the training set carries the training (random) labels.
  counts, labels, _ = eval_images([make(root)], "train")
  assert counts == collections.Counter(range(NUM_TRAIN))
  assert labels == epoch_labels(make(root).train_batches(0))


def test_resume_mid_epoch_with_augmentation(folder):
  root, _ = folder
  x = make(root, augment=True, corruption="none")
  whole = list(x.train_batches(2))
  resumed = list(make(root, augment=True, corruption="none").train_batches(2, start_step=5))
  assert len(resumed) == len(whole) - 5
  for a, b in zip(whole[5:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert list(x.train_batches(2, start_step=x.steps_per_epoch)) == []
  # Augmentation changes from epoch to epoch (crops of the same images differ).
  later = {identify(ex["image"]): ex["image"] for b in x.train_batches(3) for ex in examples(b)}
  assert not any(np.array_equal(later[identify(ex["image"])], ex["image"])
                 for b in whole for ex in examples(b))


def test_partial_labels_fraction_nesting_and_uniformity():
  n, classes = 20000, 10
  ids = tf.constant([f"train/n{i % 7}/img_{i}.JPEG" for i in range(n)])
  true = tf.constant(np.arange(n) % classes, tf.int32)
  label = lambda corruption, p, seed=0: imagenet.corrupt_labels(
      ids, true, num_classes=classes, corruption=corruption, corrupt_prob=p, seed=seed).numpy()
  changed = {p: label("partial_labels", p) != true.numpy() for p in (0.0, 0.3, 0.6)}
  # A selected label is replaced by a uniform class, which is the true one 1 time in 10.
  assert not changed[0.0].any()
  assert abs(changed[0.3].mean() - 0.3 * 0.9) < 0.015
  assert abs(changed[0.6].mean() - 0.6 * 0.9) < 0.015
  # Nested: images corrupted at p = 0.3 are corrupted the same way at 0.6 and at 1.
  at_03, at_06, at_1 = label("partial_labels", 0.3), label("partial_labels", 0.6), label(
      "random_labels", 0.0)
  assert (at_03[changed[0.3]] == at_06[changed[0.3]]).all()
  assert (at_06[changed[0.6]] == at_1[changed[0.6]]).all()
  counts = np.bincount(at_1, minlength=classes)
  assert counts.min() > 0.9 * n / classes and counts.max() < 1.1 * n / classes
  assert (label("random_labels", 0.0, seed=1) != at_1).mean() > 0.85
  np.testing.assert_array_equal(label("none", 1.0), true.numpy())


def test_eval_crop_is_tf_inception_central_crop():
  """Decoding only the central window equals TF's central_crop(0.875) + bilinear resize."""
  rng = np.random.default_rng(1)
  for fmt in ("PNG", "JPEG"):
    data = _jpeg(5, rng, fmt)
    full = tf.io.decode_image(data, channels=3)
    expected = tf.image.resize(tf.image.central_crop(full, 0.875), [SIZE, SIZE]).numpy()
    got = imagenet.eval_image(tf.constant(data), SIZE).numpy().astype(np.float32)
    off = np.abs(got - expected)
    if fmt == "PNG":
      assert off.max() <= 0.5  # Rounding only.
    else:  # libjpeg upsamples chroma differently along the decoded window's edge.
      assert off.max() < 4 and (off <= 0.5).mean() > 0.99


# --- TFDS, under tfds.testing.mock_data -----------------------------------------------------

_TFDS_IMAGES = [_jpeg(i, np.random.default_rng(i)) for i in range(NUM_TRAIN + NUM_EVAL)]


def _fake_tfds(self, split, decoders=None, read_config=None, shuffle_files=False):
  """A TFDS reader that honours 'train[a:b]' slices (TFDS's own mock ignores them).

  Split 'train' holds images 0..35 (label = index % 3), 'validation' 36..50.
  """
  del self, decoders, read_config, shuffle_files
  name, start, end = re.fullmatch(r"(\w+)(?:\[(\d*):(\d*)\])?", str(split)).groups()
  first, n = (0, NUM_TRAIN) if name == "train" else (NUM_TRAIN, NUM_EVAL)
  index = np.arange(first, first + n)[int(start or 0):int(end or n)]
  return tf.data.Dataset.from_tensor_slices({
      "image": [_TFDS_IMAGES[i] for i in index],
      "label": (index % 3).astype(np.int64),
      "file_name": [f"n{i % 3:08d}_{i}.JPEG" for i in index]})


def test_tfds_imagenet2012_layouts_labels_and_coverage():
  with tfds.testing.mock_data(as_dataset_fn=_fake_tfds):
    one = make("imagenet2012", per_device_batch=3)
    assert (one.num_classes, one.num_train, one.num_eval) == (1000, NUM_TRAIN, NUM_EVAL)
    assert one.steps_per_epoch == NUM_TRAIN // 6
    batch = next(one.train_batches(0))
    assert batch["image"].shape == (2, 3, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32
    labels = epoch_labels(one.train_batches(0))
    assert len(labels) == NUM_TRAIN and max(labels.values()) > 3  # Random over 1000 classes.
    two = [make("imagenet2012", per_device_batch=3, process_index=p, process_count=2,
                local_device_count=1) for p in range(2)]
    assert merged(two, lambda x: x.train_batches(1)) == labels  # 2 x 6 x 3 = all 36.
    assert epoch_labels(one.train_batches(1)) == labels
    counts, eval_labels, num_batches = eval_images(two)
    assert counts == collections.Counter(range(NUM_TRAIN, NUM_TRAIN + NUM_EVAL))
    assert eval_labels == {i: i % 3 for i in counts} and num_batches == [4, 4]  # 8 = 4 x 2
    assert sorted(epoch_labels(make("imagenet2012", num_train=12).train_batches(0))) == list(
        range(12))  # num_train: the first n records.
    resumed = list(one.train_batches(4, start_step=2))
    for a, b in zip(list(one.train_batches(4))[2:], resumed, strict=True):
      np.testing.assert_array_equal(a["image"], b["image"])


def test_tfds_default_mock_shapes():
  """The pipeline also runs on TFDS's own random mock (which ignores split slices)."""
  with tfds.testing.mock_data(num_examples=8):
    x = make("imagenet2012", augment=True)
    batch = next(x.train_batches(0))
    assert batch["image"].shape == (2, 2, SIZE, SIZE, 3) and batch["label"].shape == (2, 2)
    b = next(x.eval_batches())
    assert b["mask"].shape == (2, 2) and b["mask"].all()


# --- Bad input ----------------------------------------------------------------------------

def test_bad_inputs_name_the_fix(folder, tmp_path):
  root, _ = folder
  with pytest.raises(ValueError, match=r"not an image folder; expected <dir>/train/<class>"):
    make(str(tmp_path / "missing"))
  os.makedirs(tmp_path / "no_val" / "train" / "a")
  with pytest.raises(ValueError, match="not an image folder"):
    make(str(tmp_path / "no_val"))
  for split in ("train", "validation"):
    os.makedirs(tmp_path / "empty" / split / "a")
  with pytest.raises(ValueError, match=r"no images in train/a"):
    make(str(tmp_path / "empty"))
  with pytest.raises(ValueError, match=r"image_size=64 .* --config.image_size=75"):
    make(root, image_size=64)
  with pytest.raises(ValueError, match=r"corruption='shuffled_pixels' is not supported for "
                                       r"ImageNet; use one of none, partial_labels"):
    make(root, corruption="shuffled_pixels")
  with pytest.raises(ValueError, match="at least one example"):
    make(root, per_device_batch=0)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    make(root, per_device_batch=19)  # 2 devices x 19 > 36 images.
  with pytest.raises(ValueError, match="neither an image folder .* nor a TFDS dataset"):
    make("no_such_dataset_xyz")
  # imagenet2012 without its archives: the error names manual_dir and the files.
  manual = tmp_path / "tfds" / "downloads" / "manual"
  with pytest.raises(ValueError, match=rf"ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar "
                                       rf"are missing from its manual_dir {manual}"):
    make("imagenet2012", data_dir=str(tmp_path / "tfds"))
  os.makedirs(manual)
  (manual / "ILSVRC2012_img_train.tar").write_bytes(b"")
  with pytest.raises(ValueError, match=r"ILSVRC2012_img_val.tar is missing"):
    make("imagenet2012", data_dir=str(tmp_path / "tfds"))
