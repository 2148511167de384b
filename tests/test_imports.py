"""Every module of the package imports beside every other in one process, as pytest
collects them: two modules defining the same absl flag at import time would stop the
whole suite at collection (it did: profile_ops and bench.device_check, both --batch_size)."""

import importlib
import pkgutil

import rethinking

OPTIONAL = {"torch"}  # torch_reference runs in a torch-only environment.


def test_every_module_imports_together():
  imported = []
  for info in pkgutil.walk_packages(rethinking.__path__, "rethinking."):
    try:
      importlib.import_module(info.name)
    except ModuleNotFoundError as e:
      assert e.name in OPTIONAL, f"{info.name}: {e}"
      continue
    imported.append(info.name)
  assert {"rethinking.main", "rethinking.profile_ops", "rethinking.bench.device_check",
          "rethinking.bench.cli", "rethinking.sweep", "rethinking.report"} <= set(imported)
