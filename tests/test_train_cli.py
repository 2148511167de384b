"""End-to-end command-line runs on real CIFAR-10 images (the bundled sample, ../shared/data)
and through TFDS."""

import json
import os

import numpy as np
import pytest

from conftest import read_metrics, run_main

def test_quickstart_memorizes_random_labels(tmp_path):
  """The README's first command, as written: the paper's headline on the bundled sample,
  100% train accuracy on random labels, test accuracy at chance."""
  proc = run_main(tmp_path, "quickstart")
  last_line = proc.stdout.strip().splitlines()[-1]
  assert last_line.startswith("done: epoch ") and "train accuracy 1.0000" in last_line
  assert "Traceback" not in proc.stderr and "backend 'tpu'" not in proc.stderr
  rows = read_metrics(tmp_path)
  last = rows[-1]
  assert last["train_eval_accuracy"] == 1.0 and last["fit_step"] == last["step"]
  assert len(rows) < 40, "stop_at_train_accuracy should have stopped the run early"
  # 500 test images: chance is 0.1 +- 0.013 (1 sigma).
  assert abs(last["test_accuracy"] - 0.1) < 0.05
  assert last["corruption"] == "random_labels" and last["test_images_corrupted"] is False
  assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
  assert [r["step"] for r in rows] == [8 * e for e in range(1, len(rows) + 1)]
  lrs = [r["learning_rate"] for r in rows]
  np.testing.assert_allclose(lrs, [0.01 * 0.95**e for e in range(len(rows))], rtol=1e-6)
  for key in ("train_loss", "train_accuracy", "test_loss", "best_test_accuracy", "param_norm",
              "wall_time", "train_accuracy_corrupted"):
    assert key in last
  # p = 1: about 1 in 10 random labels is the true one; memorized like the rest.
  assert last["train_accuracy_clean"] == 1.0 and last["train_accuracy_corrupted"] == 1.0
  info = json.loads((tmp_path / "run_info.json").read_text())
  assert info["label_selected_fraction"] == 1.0 and abs(info["label_noise"] - 0.9) < 0.03
  assert info["num_params"] == 1_209_866 and info["steps_per_epoch"] == 8
  assert info["num_train"] == 1000 and info["num_test"] == 500
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["model"] == "mlp_1x512" and config["dataset"] == "cifar10_sample"
  assert os.listdir(tmp_path / "tensorboard")
  assert os.listdir(tmp_path / "checkpoints")


def test_true_labels_generalize_and_partial_labels_split(tmp_path, cifar_npz):
  run_main(tmp_path / "true", "model=mlp_1x512", f"--config.dataset={cifar_npz}",
           "--config.num_train=2000", "--config.num_epochs=6")
  true = read_metrics(tmp_path / "true")
  assert true[-1]["best_test_accuracy"] > 0.25  # Chance is 0.10.
  assert max(r["test_accuracy"] for r in true) == true[-1]["best_test_accuracy"]

  run_main(tmp_path / "half", "model=mlp_1x512,p=0.5", f"--config.dataset={cifar_npz}",
           "--config.num_train=1000", "--config.num_epochs=2")
  half = read_metrics(tmp_path / "half")[-1]
  info = json.loads((tmp_path / "half" / "run_info.json").read_text())
  assert abs(info["label_selected_fraction"] - 0.5) < 0.07
  assert abs(info["label_noise"] - 0.45) < 0.07  # 1 in 10 random classes is the true one.
  # The clean and corrupted parts average back to the whole.
  f = info["label_noise"]
  whole = (1 - f) * half["train_accuracy_clean"] + f * half["train_accuracy_corrupted"]
  assert whole == pytest.approx(half["train_eval_accuracy"], abs=1e-6)
  assert half["data_fingerprint"] != read_metrics(tmp_path / "true")[0]["data_fingerprint"]


def test_pixel_corruption_applies_to_test_images(tmp_path, cifar_npz):
  run_main(tmp_path, "model=mlp_1x512,corruption=shuffled_pixels,runlocal",
           f"--config.dataset={cifar_npz}", "--config.num_epochs=1", "--config.augment=crop_flip")
  row = read_metrics(tmp_path)[-1]
  assert row["test_images_corrupted"] is True and row["corruption"] == "shuffled_pixels"


def test_tfds_path_under_mock_data(tmp_path):
  """config.dataset as a TFDS name, through tfds.builder/as_dataset, with mocked files."""
  import subprocess
  import sys
  script = f"""
import sys
import tensorflow_datasets as tfds
from absl import app
sys.argv = ['main', '--config=configs/cifar10.py:model=mlp_1x512,runlocal',
            '--workdir={tmp_path}', '--config.num_train=0', '--config.num_test=0',
            '--config.num_epochs=1', '--config.batch_size=16']
from rethinking import main
from rethinking.data import arrays
arrays._unreachable_host = lambda urls: None  # mock_data mocks the download; so the probe.
with tfds.testing.mock_data(num_examples=64):
  main.run()
"""
  proc = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = read_metrics(tmp_path)
  assert rows[-1]["epoch"] == 1 and rows[-1]["step"] == 4  # 64 mock images / 16.
  info = json.loads((tmp_path / "run_info.json").read_text())
  assert info["num_train"] == 64


def test_tfds_cifar10_builder_is_usable(tmp_path):
  """A first real run (not mock data) goes through the builder's code path, which imports
  importlib_resources: TFDS does not declare it, so pyproject.toml must (the quickstart
  crashed with ModuleNotFoundError before downloading)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder("cifar10", data_dir=str(tmp_path))
  assert os.path.basename(str(builder.code_path)) == "cifar.py"
