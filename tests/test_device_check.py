"""launch/device_check.sh --tiny: the accelerator check's every section, on a CPU in seconds."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO
from rethinking.bench import device_check


def _env():
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
  env.pop("VENV", None)
  if os.path.exists(os.path.join(sys.prefix, "bin", "activate")):
    env["VENV"] = sys.prefix  # The environment running the tests, as a user would name it.
  return env


def test_tiny_device_check_prints_every_section(tmp_path):
  out = tmp_path / "check.json"
  proc = subprocess.run(["bash", str(REPO / "launch" / "device_check.sh"), "--tiny",
                         f"--json={out}"], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env=_env())
  assert proc.returncode == 0, proc.stderr[-4000:]
  text = proc.stdout
  r = json.loads(out.read_text())

  def number(pattern):
    match = re.search(pattern, text)
    assert match, (pattern, text)
    value = float(match.group(1).replace(",", ""))
    assert math.isfinite(value) and value > 0, (pattern, value)
    return value

  # 1. Three train rates of mlp_1x512 (float32, bfloat16, bfloat16 with 2 steps per call).
  row = re.search(r"^\s+mlp_1x512\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)$", text, re.M)
  assert row, text
  (train,) = r["train"]
  printed = [float(x.replace(",", "")) for x in row.groups()]
  assert printed == pytest.approx([train["float32"], train["bfloat16"],
                                   train["bfloat16_fused"]], abs=0.5)
  assert min(printed) > 0

  # 2. The MFU line: FLOPs over the step time; a CPU has no peak in the table.
  mfu = r["mfu"]
  assert number(r"2\. MFU mlp_1x512@28/16 bfloat16: ([\d,.]+) img/s") > 0
  assert mfu["achieved_flops"] == pytest.approx(mfu["flops_per_step"] / mfu["step_s"])
  assert mfu["images_per_s"] == pytest.approx(16 / mfu["step_s"])
  assert "unknown peak for device kind 'cpu'" in text and "mfu" not in mfu

  # 3. The paper-length run: the recipe's 100 epochs (mlp_1x512) from 1 + 2 real epochs.
  paper = r["paper_run"]
  assert (paper["num_epochs"], paper["steps_per_epoch"], len(paper["epoch_s_all"])) == (100, 10, 2)
  seconds = number(r"3\. paper-length mlp_1x512 run .* estimated \((\d+) s\)")
  want = paper["first_epoch_s"] + 99 * sum(paper["epoch_s_all"]) / 2
  assert paper["estimated_run_s"] == pytest.approx(want)
  assert seconds == pytest.approx(want, abs=0.5)

  # 4. figure1bc: 33 runs; mlp_1x512's 11 measured, each capped at 100 epochs.
  sweep = r["sweep"]
  assert sweep["runs"] == 33 and sweep["not_measured"] == ["alexnet_small", "inception_small"]
  cap = number(r"num_epochs cap .*\((\d+) s\)")
  shaped = number(r"relative time to overfit .*\((\d+) s\)")
  epoch = paper["epoch_s"]
  assert cap == pytest.approx(11 * (paper["first_epoch_s"] + 99 * epoch), abs=0.5)
  # Figure 1b for the MLP: p = 0 at 1.0, p = 1 at 2.0, linear between: p = 0 fits in half
  # the cap (50 epochs), p = 1 in all 100; fewer epochs than the cap in total.
  assert cap / 2 < shaped < cap
  assert "not measured (left out of both totals): alexnet_small, inception_small" in text
  assert re.search(r"device check took \d+ s", text)


@pytest.mark.parametrize("kind,peak", [
    ("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
    ("TPU v5", 459e12), ("TPU v5p", 459e12), ("cpu", None), ("NVIDIA L4", None)])
def test_peak_by_device_kind(kind, peak):
  assert device_check.peak_bf16_flops(kind) == peak


def test_figure1b_relative_time_interpolates_the_papers_points():
  assert device_check.figure1b_relative("inception_small", 0.3) == pytest.approx(2.2)
  assert device_check.figure1b_relative("alexnet_small", 0.5) == pytest.approx(1.275)
  assert device_check.figure1b_relative("mlp_1x512", 1.0) == pytest.approx(2.0)
  assert device_check.figure1b_relative("mlp_3x512", 0.5) is None


def test_a_misspelt_model_is_one_line_before_any_measurement(tmp_path):
  proc = subprocess.run(["bash", str(REPO / "launch" / "device_check.sh"), "--tiny",
                         "--mfu_model=inception_v4@299/8", f"--json={tmp_path / 'out.json'}"],
                        cwd=REPO, capture_output=True, text=True, timeout=120, env=_env())
  assert proc.returncode == 2 and not proc.stdout, proc.stdout[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: --mfu_model: unknown model 'inception_v4'; known: alexnet_small")
  assert "Traceback" not in proc.stderr and "[device_check]" not in proc.stderr
  assert not (tmp_path / "out.json").exists()
