"""Eager PyTorch reference: the train steps of the CIFAR models, for `rethinking.bench`.

Issue 7 compares the JAX train step with eager PyTorch 2.13 on the same CPU. This
is that PyTorch side, kept in the repo so the comparison can be rerun on any
machine, interleaved with the JAX measurements (`python -m rethinking.bench
--torch_python=<a python with torch>`), or alone:

  <python with torch> -m rethinking.torch_reference [--models=mlp_1x512,...] [--json=out.json]
  <python with torch> -m rethinking.torch_reference --bf16   # forward and loss under
                                                            # torch.autocast('cpu', bfloat16)
  <python with torch> -m rethinking.torch_reference --conv_ops=convs.json  # for profile_ops

It needs only torch (not jax). float32, batch 128, 3x28x28 inputs (NCHW), 10
classes, SGD(lr=0.01, momentum=0.9), cross-entropy; one step = zero_grad, forward,
loss, backward, optimizer.step; no torch.compile. The models have the parameter
counts of `rethinking.models` (asserted before timing; tests/test_bench.py keeps
REPO_PARAM_COUNTS equal to the Flax models') and their outputs were checked
against the Flax models with copied weights (logits to 7e-6).

Matching the Flax definitions:
  * "SAME" padding: stride-1 odd-kernel convs pad k//2 on each side; stride-2 3x3 convs
    and 3x3/2 max-pools on even sizes pad (0, 1) (TF puts the extra row/col at the end),
    done with an explicit F.pad (zeros for convs, -inf for pools).
  * LRN: TF's x / (bias + alpha * sum_{|d'-d|<=r} x^2)^beta with r=4 equals
    torch.nn.LocalResponseNorm(size=2r+1, alpha=alpha_tf*(2r+1), beta, k=bias).
  * BatchNorm: offset but no scale (F.batch_norm with weight=None), eps 1e-3,
    Keras momentum 0.99 == torch momentum 0.01; the conv before it has no bias.
  * Flatten order differs (NCHW vs NHWC), which does not change shapes or cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 128
NUM_CLASSES = 10
IN_SHAPE = (3, 28, 28)

# Trainable parameter counts of rethinking.models at 28x28x3, 10 classes.
REPO_PARAM_COUNTS = {
    "mlp_1x512": 1_209_866,
    "mlp_3x512": 1_735_178,
    "alexnet_small": 1_387_786,
    "inception_small": 1_649_402,
    "inception_small_nobn": 1_649_402,
}


def _init(module: nn.Module) -> None:
  """He normal (fan_in) for convs/Linear, zero biases (classifier init is irrelevant to speed)."""
  for m in module.modules():
    if isinstance(m, (nn.Conv2d, nn.Linear)):
      nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
      if m.bias is not None:
        nn.init.zeros_(m.bias)


def same_pads(size: int, k: int, s: int) -> tuple[int, int]:
  out = -(-size // s)
  total = max((out - 1) * s + k - size, 0)
  return total // 2, total - total // 2


class MaxPoolSame(nn.Module):
  """max-pool k x k / s with TF SAME padding (-inf)."""

  def __init__(self, k: int = 3, s: int = 2):
    super().__init__()
    self.k, self.s = k, s

  def forward(self, x):
    ph = same_pads(x.shape[2], self.k, self.s)
    pw = same_pads(x.shape[3], self.k, self.s)
    if any(ph + pw):
      x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]), value=float("-inf"))
    return F.max_pool2d(x, self.k, self.s)


class ConvSame(nn.Module):
  """Conv2d with TF SAME padding (symmetric for stride 1, explicit F.pad otherwise)."""

  def __init__(self, cin, cout, k, stride=1, bias=True):
    super().__init__()
    self.k, self.stride = k, stride
    pad = k // 2 if stride == 1 else 0
    self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=bias)

  def forward(self, x):
    if self.stride != 1:
      ph = same_pads(x.shape[2], self.k, self.stride)
      pw = same_pads(x.shape[3], self.k, self.stride)
      if any(ph + pw):
        x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
    return self.conv(x)


class MLP(nn.Module):
  def __init__(self, depth: int, width: int = 512):
    super().__init__()
    layers, d = [nn.Flatten()], 28 * 28 * 3
    for _ in range(depth):
      layers += [nn.Linear(d, width), nn.ReLU()]
      d = width
    layers.append(nn.Linear(d, NUM_CLASSES))
    self.net = nn.Sequential(*layers)

  def forward(self, x):
    return self.net(x)


def tf_lrn(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75):
  n = 2 * depth_radius + 1
  return nn.LocalResponseNorm(n, alpha=alpha * n, beta=beta, k=bias)


class AlexNetSmall(nn.Module):
  """conv-relu-pool-LRN, conv-relu-LRN-pool, Dense 384, Dense 192, Dense 10."""

  def __init__(self):
    super().__init__()
    self.features = nn.Sequential(
        ConvSame(3, 64, 5), nn.ReLU(), MaxPoolSame(), tf_lrn(),
        ConvSame(64, 64, 5), nn.ReLU(), tf_lrn(), MaxPoolSame(),
        nn.Flatten())
    self.head = nn.Sequential(
        nn.Linear(7 * 7 * 64, 384), nn.ReLU(), nn.Linear(384, 192), nn.ReLU(),
        nn.Linear(192, NUM_CLASSES))

  def forward(self, x):
    return self.head(self.features(x))


class BatchNormNoScale(nn.Module):
  """BatchNorm with offset, no scale; eps 1e-3; Keras momentum 0.99 (torch 0.01)."""

  def __init__(self, c, eps=1e-3, momentum=0.01):
    super().__init__()
    self.bias = nn.Parameter(torch.zeros(c))
    self.register_buffer("running_mean", torch.zeros(c))
    self.register_buffer("running_var", torch.ones(c))
    self.eps, self.momentum = eps, momentum

  def forward(self, x):
    return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias,
                        self.training, self.momentum, self.eps)


class ConvModule(nn.Module):
  def __init__(self, cin, cout, k, stride=1, use_bn=True):
    super().__init__()
    self.conv = ConvSame(cin, cout, k, stride, bias=not use_bn)
    self.bn = BatchNormNoScale(cout) if use_bn else nn.Identity()

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
  def __init__(self, cin, c1, c3, use_bn):
    super().__init__()
    self.b1 = ConvModule(cin, c1, 1, use_bn=use_bn)
    self.b3 = ConvModule(cin, c3, 3, use_bn=use_bn)
    self.cout = c1 + c3

  def forward(self, x):
    return torch.cat([self.b1(x), self.b3(x)], dim=1)


class Downsample(nn.Module):
  def __init__(self, cin, c3, use_bn):
    super().__init__()
    self.b3 = ConvModule(cin, c3, 3, stride=2, use_bn=use_bn)
    self.pool = MaxPoolSame(3, 2)
    self.cout = c3 + cin

  def forward(self, x):
    return torch.cat([self.b3(x), self.pool(x)], dim=1)


BLOCKS = (("inc", 32, 32), ("inc", 32, 48), ("down", 80),
          ("inc", 112, 48), ("inc", 96, 64), ("inc", 80, 80),
          ("inc", 48, 96), ("down", 96),
          ("inc", 176, 160), ("inc", 176, 160))


class InceptionSmall(nn.Module):
  def __init__(self, use_bn=True):
    super().__init__()
    layers, c = [ConvModule(3, 96, 3, use_bn=use_bn)], 96
    for kind, *f in BLOCKS:
      blk = Inception(c, *f, use_bn) if kind == "inc" else Downsample(c, *f, use_bn)
      layers.append(blk)
      c = blk.cout
    self.body = nn.Sequential(*layers)
    self.fc = nn.Linear(c, NUM_CLASSES)

  def forward(self, x):
    return self.fc(self.body(x).mean(dim=(2, 3)))


MODELS = {
    "mlp_1x512": lambda: MLP(1),
    "mlp_3x512": lambda: MLP(3),
    "alexnet_small": AlexNetSmall,
    "inception_small": lambda: InceptionSmall(True),
    "inception_small_nobn": lambda: InceptionSmall(False),
}
DEFAULT_MODELS = ("mlp_1x512", "mlp_3x512", "alexnet_small", "inception_small")


def n_params(model):
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def bench(name, steps, warmup, max_seconds, min_seconds=0.0, seed=0, bf16=False):
  """As rethinking.bench.timing.time_calls: at least `steps` steps and `min_seconds`, at most
  `max_seconds` (once 3 are timed); the median step. `bf16`: forward and loss under
  `torch.autocast('cpu', torch.bfloat16)` (float32 parameters, bfloat16 convs and
  matmuls), PyTorch's counterpart of the trainer's half_precision=True."""
  torch.manual_seed(seed)
  model = MODELS[name]()
  _init(model)
  model.train()
  count = n_params(model)
  assert count == REPO_PARAM_COUNTS[name], (name, count, REPO_PARAM_COUNTS[name])
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  x = torch.randn(BATCH, *IN_SHAPE)
  y = torch.randint(0, NUM_CLASSES, (BATCH,))

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
      loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss

  for _ in range(warmup):
    step()
  times, start = [], time.perf_counter()
  while len(times) < steps or time.perf_counter() - start < min_seconds:
    t0 = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t0)
    if len(times) >= 3 and time.perf_counter() - start > max_seconds:
      break
  med = statistics.median(times)
  return {"model": name, "params": count, "steps_timed": len(times),
          "median_step_ms": med * 1e3, "min_step_ms": min(times) * 1e3,
          "images_per_s": BATCH / med, "final_loss": float(loss.detach()),
          "dtype": "bfloat16 autocast" if bf16 else "float32"}


def _median_ms(fn, repeats):
  for _ in range(2):
    fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def conv_ops(specs, repeats=10):
  """Eager PyTorch's time (ms, median) for each convolution of `specs`, as
  rethinking.profile_ops describes them (NHWC / HWIO shapes, explicit padding): the
  forward conv, the input gradient (where `needs_dx`) and the weight gradient. The
  tensors are NCHW, as the reference models run; uneven padding (stride-2 SAME) is an
  explicit F.pad before the conv, as ConvSame does."""
  torch.manual_seed(0)
  out = []
  for s in specs:
    dtype = torch.bfloat16 if s["dtype"] == "bfloat16" else torch.float32
    n, h, w, cin = s["x"]
    kh, kw, _, cout = s["w"]
    (pt, pb), (pl, pr) = s["padding"]
    x = torch.randn(n, cin, h, w, dtype=dtype, requires_grad=True)
    wt = torch.randn(cout, cin, kh, kw, dtype=dtype, requires_grad=True)
    even = pt == pb and pl == pr

    def fwd(x=x, wt=wt, s=s, even=even, pads=(pl, pr, pt, pb)):
      xin = x if even else F.pad(x, pads)
      return F.conv2d(xin, wt, stride=tuple(s["strides"]), padding=(pads[2], pads[0]) if even
                      else 0)

    with torch.no_grad():
      row = {"fwd": _median_ms(fwd, repeats)}
    y = fwd()
    g = torch.randn_like(y)
    if s.get("needs_dx", True):
      row["dx"] = _median_ms(lambda: torch.autograd.grad(y, x, g, retain_graph=True), repeats)
    row["dw"] = _median_ms(lambda: torch.autograd.grad(y, wt, g, retain_graph=True), repeats)
    out.append(row)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=20, help="timed steps per model")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--max-seconds", type=float, default=15.0, help="stop timing a model after this")
  p.add_argument("--min-seconds", type=float, default=2.0, help="time a model at least this long")
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                 help=f"comma-separated, from {','.join(MODELS)}")
  p.add_argument("--json", nargs="?", const="-", default=None,
                 help="also write JSON results (to stdout, or to the given path)")
  p.add_argument("--bf16", action="store_true",
                 help="forward and loss under torch.autocast('cpu', dtype=torch.bfloat16)")
  p.add_argument("--conv_ops", default=None,
                 help="instead: time the convolutions listed in this JSON file (from "
                 "rethinking.profile_ops) and print their times as JSON")
  p.add_argument("--conv_repeats", type=int, default=10)
  a = p.parse_args(argv)
  torch.set_num_threads(a.threads)
  if a.conv_ops:
    with open(a.conv_ops) as f:
      print(json.dumps(conv_ops(json.load(f), a.conv_repeats)))
    return

  # Parameter-count check against the repo for every model, before any timing.
  for name in a.models.split(","):
    c = n_params(MODELS[name]())
    assert c == REPO_PARAM_COUNTS[name], f"{name}: torch {c:,} != repo {REPO_PARAM_COUNTS[name]:,}"
    print(f"params ok  {name:<22} {c:>10,}", file=sys.stderr)

  results = [bench(n, a.steps, a.warmup, a.max_seconds, a.min_seconds, bf16=a.bf16)
             for n in a.models.split(",")]
  print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, batch={BATCH}, "
        f"{'bfloat16 autocast' if a.bf16 else 'float32'}, eager")
  print(f"{'model':<22}{'params':>12}{'steps':>7}{'median ms':>11}{'min ms':>9}{'images/s':>10}")
  for r in results:
    print(f"{r['model']:<22}{r['params']:>12,}{r['steps_timed']:>7}{r['median_step_ms']:>11.1f}"
          f"{r['min_step_ms']:>9.1f}{r['images_per_s']:>10.0f}")
  if a.json is not None:
    payload = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": BATCH,
               "results": results}
    if a.json == "-":
      print(json.dumps(payload, indent=1))
    else:
      with open(a.json, "w") as f:
        json.dump(payload, f, indent=1)


if __name__ == "__main__":
  main()
