"""Config presets and bad input: one clear error, before any compute, nothing on disk touched."""

import importlib.util
import pathlib

import numpy as np
import pytest

from conftest import REPO, run_main
from rethinking import train
from rethinking.models import get_model


def _load_config_module():
  spec = importlib.util.spec_from_file_location("cifar10_config", REPO / "configs" / "cifar10.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


cifar10 = _load_config_module()


def test_presets_follow_the_paper():
  c = cifar10.get_config("")
  assert (c.model, c.corruption, c.batch_size, c.learning_rate, c.lr_decay, c.momentum) == (
      "inception_small", "none", 128, 0.1, 0.95, 0.9)
  assert cifar10.get_config("model=alexnet_small").learning_rate == 0.01
  c = cifar10.get_config("model=mlp_1x512,p=0.3,fit")
  assert (c.corruption, c.corrupt_prob, c.stop_at_train_accuracy) == ("partial_labels", 0.3, 1.0)
  c = cifar10.get_config("model=inception_small,crop,wd")
  assert c.augment == "crop" and c.weight_decay > 0
  assert cifar10.get_config("corruption=random_labels").weight_decay == 0
  assert cifar10.get_config("runlocal").num_train == 1000


def test_docstring_commands_are_valid_presets():
  """Every command in the config's docstring parses and names a known model."""
  args = [line.split("cifar10.py:")[1].split()[0] for line in cifar10.__doc__.splitlines()
          if "cifar10.py:" in line]
  assert len(args) >= 19 + 5  # Table 1 rows and Figure 1a settings at least.
  for arg in args:
    c = cifar10.get_config(arg)
    get_model(c.model)


def test_unknown_preset_key_lists_known_ones():
  with pytest.raises(ValueError, match="'mdoel'.*known: .*model"):
    cifar10.get_config("mdoel=mlp_1x512")


def _config(dataset, **overrides):
  c = cifar10.get_config("model=mlp_1x512,runlocal")
  c.dataset = str(dataset)
  c.update(overrides)
  return c


def _write_npz(path, **changes):
  rng = np.random.default_rng(0)
  arrays = dict(x_train=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
                y_train=np.arange(40) % 10, x_test=rng.integers(0, 256, (20, 32, 32, 3),
                                                                 dtype=np.uint8),
                y_test=np.arange(20) % 10)
  arrays.update(changes)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  np.savez(path, **arrays)
  return path


@pytest.mark.parametrize("field,value,message", [
    ("model", "resnet50", r"config.model='resnet50'.*inception_small"),
    ("corruption", "noisy", r"config.corruption='noisy'.*random_labels"),
    ("augment", "mixup", r"config.augment='mixup'.*crop_flip"),
    ("corrupt_prob", 1.5, r"config.corrupt_prob=1.5.*\[0, 1\]"),
    ("num_epochs", 0, r"config.num_epochs=0.*positive"),
    ("batch_size", 500, r"config.batch_size=500.*40 training examples"),
    ("lr_decay", 1.5, r"config.lr_decay=1.5"),
    ("num_train", 100, r"config.num_train=100.*1..40"),
])
def test_bad_config_fails_before_touching_the_workdir(tmp_path, field, value, message):
  data = _write_npz(tmp_path / "data.npz")
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text("previous")
  (workdir / "metrics.jsonl").write_text("{}\n")
  config = _config(data, **{"num_train": 0, "num_test": 0, "batch_size": 8, field: value})
  if field == "corrupt_prob":
    config.corruption = "partial_labels"
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(workdir))
  assert (workdir / "config.json").read_text() == "previous"
  assert (workdir / "metrics.jsonl").read_text() == "{}\n"
  assert sorted(p.name for p in workdir.iterdir()) == ["config.json", "metrics.jsonl"]


@pytest.mark.parametrize("changes,message", [
    ({"y_test": None}, r"missing keys \['y_test'\]"),
    ({"x_train": np.zeros((40, 32, 32, 3), np.float32)}, r"x_train has dtype float32.*uint8"),
    ({"x_train": np.zeros((40, 32, 32, 5), np.uint8)}, r"x_train has shape \(40, 32, 32, 5\)"),
    ({"y_train": np.arange(39) % 10}, r"y_train has shape \(39,\)"),
    ({"y_test": np.arange(20) % 10 + 5}, r"y_test has labels in \[5, 14\]; expected 0..9"),
    ({"y_train": -(np.arange(40) % 10)}, r"y_train has labels in \[-9, 0\]"),
])
def test_malformed_dataset_file(tmp_path, changes, message):
  data = _write_npz(tmp_path / "data.npz", **changes)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(_config(data, num_train=0, num_test=0, batch_size=8),
                             str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_missing_and_unreadable_dataset(tmp_path):
  with pytest.raises(ValueError, match=r"config.dataset=.*nope.npz.*file not found"):
    train.train_and_evaluate(_config(tmp_path / "nope.npz"), str(tmp_path / "run"))
  (tmp_path / "bad.npz").write_bytes(b"garbage")
  with pytest.raises(ValueError, match=r"bad.npz.*not a readable .npz"):
    train.train_and_evaluate(_config(tmp_path / "bad.npz"), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_cli_reports_bad_input_and_typos(tmp_path):
  proc = run_main(tmp_path / "run", "model=mlp_1x512", "--config.dataset=not_a_dataset_xyz",
                  check=False)
  assert proc.returncode != 0
  assert "config.dataset='not_a_dataset_xyz'" in proc.stderr
  assert not (tmp_path / "run").exists()
  proc = run_main(tmp_path / "run", "model=mlp_1x512", "--config.nmu_epochs=3", check=False)
  assert proc.returncode != 0 and "nmu_epochs" in proc.stderr


@pytest.mark.parametrize("changes,message", [
    ({"learning_rate": float("inf")}, r"config.learning_rate=inf .*finite"),
    ({"weight_decay": float("nan")}, r"config.weight_decay=nan .*finite"),
    ({"bn_momentum": 5.0}, r"config.bn_momentum=5.0 .*\[0, 1\)"),
    ({"corruption": "partial_labels", "corrupt_prob": -1.0},
     r"config.corrupt_prob=-1.0 .*partial_labels needs its probability"),
    ({"corruption": "random_labels", "corrupt_prob": 0.3},
     r"config.corrupt_prob=0.3 .*only corruption=partial_labels reads it"),
    ({"num_test": 5000}, r"config.num_test=5000 .*1..20 \(the test set's size"),
    ({"num_train": 5000}, r"config.num_train=5000 .*1..40 \(the train set's size"),
    ({"memory_fraction": 1.5}, r"config.memory_fraction=1.5 .*\(0, 1\], or 0"),
    ({"memory_fraction": -0.2}, r"config.memory_fraction=-0.2 .*\(0, 1\], or 0"),
    ({"eval_train_every_epochs": 0}, r"config.eval_train_every_epochs=0 .*positive"),
    ({"steps_per_dispatch": -1}, r"config.steps_per_dispatch=-1 .*positive.*or 0 for"),
])
def test_out_of_range_fields_fail_before_the_workdir_exists(tmp_path, changes, message):
  """Issue 15, item 8: each is one ValueError (exit 2 on the command line) naming the
  field, its value and what is allowed, raised before the workdir is created."""
  data = _write_npz(tmp_path / "data.npz")
  config = _config(data, **dict({"num_train": 0, "num_test": 0, "batch_size": 8}, **changes))
  with pytest.raises(ValueError, match=message) as e:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("changes,message", [
    ({"x_train": np.zeros((0, 32, 32, 3), np.uint8), "y_train": np.zeros((0,), np.int64)},
     r"data.npz.*x_train .*hold no examples"),
    ({"y_train": np.full(40, 3)}, r"data.npz.*y_train has a single class"),
])
def test_empty_or_one_class_data_fails_before_the_workdir_exists(tmp_path, changes, message):
  data = _write_npz(tmp_path / "data.npz", **changes)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(_config(data, num_train=0, num_test=0, batch_size=8),
                             str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_cli_out_of_range_field_is_one_error_line_exit_2(tmp_path):
  proc = run_main(tmp_path / "run", "model=mlp_1x512", "--config.learning_rate=inf",
                  check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "config.learning_rate=inf" in errors[0] and "finite" in errors[0]
  assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
