"""What the measurements run on: model specs, the CIFAR config and in-memory task, synthetic data."""

from __future__ import annotations

import importlib.util
import pathlib

from absl import app
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
CIFAR_MODELS = ("mlp_1x512", "mlp_3x512", "alexnet_small", "inception_small",
                "inception_small_nobn")


def parse_model(spec: str, batch_size: int = 128, flag: str = "models") -> tuple[str, int, int]:
  """'alexnet_small' -> (alexnet_small, 28, batch_size); 'inception_v3@75/32' -> (.., 75, 32).
  Errors name `--flag`, the flag the spec came from."""
  spec, _, batch = spec.partition("/")
  name, _, size = spec.partition("@")
  from rethinking.models import MODELS  # pylint: disable=g-import-not-at-top
  if name not in MODELS:
    raise app.UsageError(f"--{flag}: unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
  try:
    size = int(size) if size else (299 if name == "inception_v3" else 28)
    batch = int(batch) if batch else batch_size
  except ValueError:
    raise app.UsageError(f"--{flag}={spec}: expected name[@size][/batch]") from None
  if name != "inception_v3" and size != 28:
    raise app.UsageError(f"--{flag}={spec}: the CIFAR models run at 28x28")
  return name, size, batch


def cifar_config(name: str, **overrides):
  """configs/cifar10.py's config of model `name` (the paper's recipe), with overrides."""
  spec = importlib.util.spec_from_file_location("cifar10_config", REPO / "configs" / "cifar10.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"model={name}")
  for k, v in overrides.items():
    setattr(config, k, v)
  return config


def synthetic_npz(path: pathlib.Path, num_train: int, num_test: int, size: int = 32) -> str:
  """A CIFAR-shaped .npz of random images, labels cycling through the 10 classes."""
  rng = np.random.default_rng(0)
  np.savez(path, x_train=rng.integers(0, 256, (num_train, size, size, 3), dtype=np.uint8),
           y_train=np.arange(num_train) % 10, x_test=rng.integers(
               0, 256, (num_test, size, size, 3), dtype=np.uint8),
           y_test=np.arange(num_test) % 10)
  return str(path)


def in_memory_task(name: str, dataset: str, **overrides):
  """(config, train.InMemoryTask) of model `name` on `dataset` (a .npz path)."""
  from rethinking import backend_defaults  # pylint: disable=g-import-not-at-top
  from rethinking import train  # pylint: disable=g-import-not-at-top
  # As a run resolves them: the JSON then records what the task really trains with.
  config = backend_defaults.resolve(cifar_config(name, dataset=dataset, **overrides))
  return config, train.InMemoryTask(config, train.load_data(config))


def num_train_images(path: str) -> int:
  """Training images in a CIFAR .npz (0 where there is no such file)."""
  if not pathlib.Path(path).exists():
    return 0
  with np.load(path) as f:
    return len(f["y_train"])
