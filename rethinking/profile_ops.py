r"""Where a conv net's train step goes on this machine: its layers timed one by one.

  python -m rethinking.profile_ops --model=inception_small
  python -m rethinking.profile_ops --model=alexnet_small --torch_python=$TORCH_ENV/bin/python
  python -m rethinking.profile_ops --model=inception_small --dtype=bfloat16

The model's train-mode forward pass (batch 128, 28x28x3, as the CIFAR trainer feeds it)
is traced once. Each convolution in the trace is timed three ways, each jitted alone:
forward, input gradient ("dx"; not needed, and not counted, for a conv that reads the
image) and weight gradient ("dw"). The other layers are found by their scope in the
trace (flax's `BatchNorm_*` modules, `layers.max_pool`, `layers.lrn`) and their traced
equations are timed as they are, forward and forward + backward. Identical ops are
timed once and counted. Each figure is the median of --repeats calls after warm-up,
synchronized with `block_until_ready`, and is shown as a share of the full train step
(`step.train_step`, jitted, SGD with momentum) timed in the same process; "other" is
what the listed ops leave of it (ReLU, concatenation, Dense layers, loss, optimizer,
and what fusion across layers saves or costs). With --torch_python the same
convolutions are timed in eager PyTorch (`rethinking.torch_reference --conv_ops`) in
the same run. --alternatives adds each conv computed as patches + one matmul
(`im2col_conv`) against XLA's conv, forward, dx and dw.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import jax
import jax.extend.core as jex
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax

from rethinking import step as step_lib
from rethinking.bench import environment
from rethinking.bench import timing
from rethinking.models import get_model

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags, defined only when run as a program: tests import this
  module beside others (rethinking.bench.device_check) that define the same names."""
  flags.DEFINE_enum("model", "inception_small", ["mlp_1x512", "mlp_3x512", "alexnet_small",
                                                  "inception_small", "inception_small_nobn"],
                    "A CIFAR model of rethinking.models.")
  flags.DEFINE_integer("batch_size", 128, "Images per step.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                    "Compute dtype (bfloat16: as half_precision=True; parameters float32).")
  flags.DEFINE_integer("repeats", 10, "Timed calls per op (the median is reported).")
  flags.DEFINE_string("torch_python", "", "A python with torch: time the same convolutions "
                      "in eager PyTorch too.")
  flags.DEFINE_bool("alternatives", False, "Also time each conv as im2col_conv (patches + "
                    "one matmul; a 1x1 conv as a plain matmul) against XLA's conv.")


IMAGE_SHAPE = (28, 28, 3)
# The layers timed as a whole: the last matching scope of an equation names its layer.
LAYER_SCOPES = (("batch_norm", re.compile(r"BatchNorm_\d+$")),
                ("max_pool", re.compile(r"max_pool$")), ("lrn", re.compile(r"lrn$")))


def median_ms(fn, *args, repeats: int) -> float:
  """Median wall time of `fn(*args)` in ms over `repeats` calls, after two untimed calls
  (the first compiles)."""
  return 1e3 * timing.time_calls(lambda: fn(*args), repeats, 2, math.inf).median


def random_like(avals, seed: int = 0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal(a.shape), a.dtype)
          if jnp.issubdtype(a.dtype, jnp.inexact) else jnp.zeros(a.shape, a.dtype)
          for a in avals]


def _layer_of(eqn) -> tuple[str, str] | None:
  """(kind, scope) of the layer an equation belongs to, or None."""
  parts = str(eqn.source_info.name_stack).split("/")
  for i in range(len(parts), 0, -1):
    for kind, pattern in LAYER_SCOPES:
      if pattern.search(parts[i - 1]):
        return kind, "/".join(parts[:i])
  return None


def segments(jaxpr):
  """The forward pass cut into ops: each conv equation alone, and each run of
  equations of one layer scope. Yields (kind, equations, needs dx): a conv whose input
  does not depend on the parameters (it reads the image) has no input gradient."""
  params_dependent = set(jaxpr.invars[:-1])  # invars: the variables' leaves, then x.
  current, key = [], None
  for eqn in jaxpr.eqns:
    is_conv = eqn.primitive.name == "conv_general_dilated"
    layer = None if is_conv else _layer_of(eqn)
    if current and (is_conv or layer != key):
      yield key[0], current, True
      current, key = [], None
    if is_conv:
      yield "conv", [eqn], eqn.invars[0] in params_dependent
    elif layer is not None:
      current, key = current + [eqn], layer
    if any(v in params_dependent for v in eqn.invars if isinstance(v, jex.Var)):
      params_dependent.update(eqn.outvars)
  if current:
    yield key[0], current, True


def as_function(eqns):
  """The equations as a function of the variables they read (in first-read order);
  returns (fn, input avals)."""
  defined = {v for e in eqns for v in e.outvars}
  invars = list(dict.fromkeys(v for e in eqns for v in e.invars
                              if isinstance(v, jex.Var) and v not in defined))
  outvars = [v for e in eqns for v in e.outvars if not isinstance(v, jex.DropVar)]
  closed = jex.ClosedJaxpr(jex.Jaxpr([], invars, outvars, eqns), [])
  return jex.jaxpr_as_fun(closed), [v.aval for v in invars]


def _vjp_fn(fn, wrt):
  """jit(args, cotangents -> gradients of fn's outputs against the args listed in wrt)."""
  def grads(args, cts):
    def partial_fn(*diff):
      full = list(args)
      for i, d in zip(wrt, diff):
        full[i] = d
      return fn(*full)
    _, vjp = jax.vjp(partial_fn, *[args[i] for i in wrt])
    return vjp(cts)
  return jax.jit(grads)


def time_segment(kind, eqns, repeats):
  """ms per call: a conv's forward, dx and dw; another layer's forward and fwd+bwd."""
  fn, avals = as_function(eqns)
  args = random_like(avals)
  outs = jax.eval_shape(fn, *args)
  cts = random_like(outs, 1)
  float_args = [i for i, a in enumerate(avals) if jnp.issubdtype(a.dtype, jnp.inexact)]
  fwd = median_ms(jax.jit(fn), *args, repeats=repeats)
  if kind != "conv":
    both = median_ms(_vjp_fn(fn, float_args), args, cts, repeats=repeats)
    return {"fwd": fwd, "fwd+bwd": both}
  dx = median_ms(_vjp_fn(fn, [0]), args, cts, repeats=repeats)
  dw = median_ms(_vjp_fn(fn, [1]), args, cts, repeats=repeats)
  return {"fwd": fwd, "dx": dx, "dw": dw}


def conv_spec(eqn) -> dict:
  """The conv's shapes and window, NHWC / HWIO (flax's layout)."""
  p = eqn.params
  assert p["dimension_numbers"].lhs_spec == (0, 3, 1, 2), p["dimension_numbers"]
  assert p["feature_group_count"] == 1 and set(p["rhs_dilation"]) == {1}
  return {"x": list(eqn.invars[0].aval.shape), "w": list(eqn.invars[1].aval.shape),
          "strides": list(p["window_strides"]), "padding": [list(q) for q in p["padding"]],
          "dtype": str(eqn.invars[0].aval.dtype)}


def describe(kind, eqns) -> str:
  if kind == "conv":
    s = conv_spec(eqns[0])
    (kh, kw, cin, cout), (_, h, w, _) = s["w"], s["x"]
    pad = "padded" if any(sum(s["padding"], [])) else ""
    return f"conv {kh}x{kw}/{s['strides'][0]} {cin:>3}->{cout:<3} @{h}x{w} {pad}"
  x = next(v.aval for v in eqns[0].invars if isinstance(v, jex.Var))
  return f"{kind} {'x'.join(map(str, x.shape[1:]))}"


def full_step(model, variables, batch_size, dtype):
  """A no-argument call of the jitted, compiled train step (state donated and kept)."""
  tx = optax.sgd(0.1, momentum=0.9)
  # A copy: the step donates its state, and the ops reuse `variables`.
  state = step_lib.create_train_state(None, model, IMAGE_SHAPE, tx,
                                      variables=jax.tree.map(jnp.copy, variables))
  rng = np.random.default_rng(2)
  batch = {"image": jnp.asarray(rng.standard_normal((batch_size, *IMAGE_SHAPE)), dtype),
           "label": jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)}
  key = jax.random.key(0)
  train = jax.jit(step_lib.train_step, donate_argnums=0).lower(state, batch, key).compile()
  holder = [state]

  def call():
    holder[0], sums = train(holder[0], batch, key)
    return sums
  return call


def full_step_ms(model, variables, batch_size, dtype, repeats):
  return median_ms(full_step(model, variables, batch_size, dtype), repeats=repeats)


def im2col_conv(x, kernel, strides, padding):
  """The NHWC x HWIO convolution as one matmul: [N*H'*W', kh*kw*Cin] patches (strided
  slices of the padded input, concatenated) times the kernel as [kh*kw*Cin, Cout]. Its
  VJP is two matmuls plus the slices' transposes (pads and adds). A 1x1 stride-1 conv
  is the matmul alone. The alternative --alternatives times against XLA's conv."""
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  if (kh, kw) == (1, 1) and tuple(strides) == (1, 1):
    y = jnp.dot(x.reshape(-1, cin), kernel.reshape(cin, cout))
    return y.reshape(n, h, w, cout)
  pads = (lax.padtype_to_pads((h, w), (kh, kw), strides, padding)
          if isinstance(padding, str) else padding)
  xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  ho = (h + sum(pads[0]) - kh) // strides[0] + 1
  wo = (w + sum(pads[1]) - kw) // strides[1] + 1
  taps = [lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * strides[0] + 1,
                                       j + (wo - 1) * strides[1] + 1, cin),
                    (1, strides[0], strides[1], 1)) for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(taps, axis=-1).reshape(-1, kh * kw * cin)  # (i, j, c): HWIO's order
  return jnp.dot(patches, kernel.reshape(-1, cout)).reshape(n, ho, wo, cout)


def alternatives(rows, repeats):
  """XLA's conv against im2col_conv for each conv row: forward, dx, dw (ms)."""
  out = []
  for r in rows:
    if r["kind"] != "conv":
      continue
    s = r["spec"]
    dtype = jnp.dtype(s["dtype"])
    strides, padding = tuple(s["strides"]), [tuple(p) for p in s["padding"]]
    x, kernel = random_like([jax.core.ShapedArray(s["x"], dtype),
                             jax.core.ShapedArray(s["w"], dtype)])
    kernel = kernel * (1.0 / np.sqrt(np.prod(s["w"][:3])))
    xla = lambda x, k: lax.conv_general_dilated(x, k, strides, padding,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
    alt = functools.partial(im2col_conv, strides=strides, padding=padding)
    y = xla(x, kernel)
    error = float(jnp.max(jnp.abs(alt(x, kernel) - y).astype(jnp.float32)))
    assert error < 0.05 * float(jnp.max(jnp.abs(y).astype(jnp.float32))), (r["op"], error)
    g = random_like([jax.core.ShapedArray(y.shape, dtype)], 1)[0]
    row = {"op": r["op"], "count": r["count"], "needs_dx": r["needs_dx"]}
    for name, fn in (("xla", xla), ("im2col", alt)):
      grads = lambda x, k, wrt, fn=fn: jax.vjp(lambda *a: fn(*a), x, k)[1](g)[wrt]
      row[name] = {"fwd": median_ms(jax.jit(fn), x, kernel, repeats=repeats),
                   "dx": median_ms(jax.jit(functools.partial(grads, wrt=0)), x, kernel,
                                   repeats=repeats),
                   "dw": median_ms(jax.jit(functools.partial(grads, wrt=1)), x, kernel,
                                   repeats=repeats)}
    out.append(row)
  return out


def alternatives_table(alts) -> str:
  lines = [f"{'op':<36}{'n':>3}   {'XLA fwd':>8}{'dx':>8}{'dw':>8}   {'im2col fwd':>10}"
           f"{'dx':>8}{'dw':>8}   {'im2col/XLA':>10}"]
  for a in alts:
    total = {k: a[k]["fwd"] + a[k]["dw"] + (a[k]["dx"] if a["needs_dx"] else 0.0)
             for k in ("xla", "im2col")}
    cells = lambda k: "".join(f"{a[k][p]:>{8 if p != 'fwd' or k == 'xla' else 10}.2f}"
                              for p in ("fwd", "dx", "dw"))
    lines.append(f"{a['op']:<36}{a['count']:>3}   {cells('xla')}   {cells('im2col')}   "
                 f"{total['im2col'] / total['xla']:>10.2f}")
  return "\n".join(lines)


def _random_variables(model):
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)), train=False))
  return jax.tree.map(lambda a: random_like([a])[0], abstract)


def torch_conv_ms(python: str, specs: list[dict], repeats: int) -> list[dict]:
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "convs.json"
    path.write_text(json.dumps(specs))
    out = subprocess.run(
        [python, "-m", "rethinking.torch_reference", f"--conv_ops={path}",
         f"--conv_repeats={repeats}"], capture_output=True, text=True, check=False,
        cwd=pathlib.Path(__file__).resolve().parents[1])
  if out.returncode:
    raise RuntimeError(f"torch_reference --conv_ops failed:\n{out.stderr[-2000:]}")
  return json.loads(out.stdout)


def profile(name: str, batch_size: int, dtype, repeats: int, torch_python: str = ""):
  """Times the ops; returns (rows, full step ms, torch rows or None)."""
  model = get_model(name, dtype=dtype)
  variables = _random_variables(model)
  leaves, tree = jax.tree.flatten(variables)
  x = jax.ShapeDtypeStruct((batch_size, *IMAGE_SHAPE), dtype)
  mutable = ["batch_stats"] if "batch_stats" in variables else False

  def forward(*args):
    out = model.apply(jax.tree.unflatten(tree, args[:-1]), args[-1], train=True,
                      mutable=mutable, rngs={"dropout": jax.random.key(0)})
    return out
  jaxpr = jax.make_jaxpr(forward)(*leaves, x).jaxpr

  groups = collections.OrderedDict()
  for kind, eqns, needs_dx in segments(jaxpr):
    key = (describe(kind, eqns), needs_dx if kind == "conv" else None)
    groups.setdefault(key, {"kind": kind, "eqns": eqns, "count": 0, "needs_dx": needs_dx})
    groups[key]["count"] += 1
  step_ms = full_step_ms(model, variables, batch_size, dtype, repeats)
  rows = []
  for (label, _), g in groups.items():
    print(f"  timing {label} ...", file=sys.stderr)
    t = time_segment(g["kind"], g["eqns"], repeats)
    per_call = (t["fwd"] + (t["dx"] if g["needs_dx"] else 0.0) + t["dw"]
                if g["kind"] == "conv" else t["fwd+bwd"])
    rows.append(dict(t, op=label, kind=g["kind"], count=g["count"], needs_dx=g["needs_dx"],
                     total=per_call * g["count"],
                     spec=conv_spec(g["eqns"][0]) if g["kind"] == "conv" else None))
  step_after = full_step_ms(model, variables, batch_size, dtype, repeats)
  torch_rows = None
  if torch_python:
    specs = [dict(r["spec"], needs_dx=r["needs_dx"]) for r in rows if r["kind"] == "conv"]
    torch_rows = torch_conv_ms(torch_python, specs, repeats)
  return rows, (step_ms + step_after) / 2, (step_ms, step_after), torch_rows


def table(rows, step_ms, torch_rows) -> str:
  lines = [f"{'op':<36}{'n':>3}{'fwd':>8}{'dx':>8}{'dw':>8}{'fwd+bwd':>9}{'total':>9}"
           f"{'% step':>8}" + (f"{'torch fwd':>11}{'dx':>7}{'dw':>7}{'total':>8}"
                                f"{'x torch':>8}" if torch_rows else "")]
  lines.append("-" * len(lines[0]))
  convs = iter(torch_rows or [])
  fmt = lambda v: f"{v:.2f}" if v is not None else "-"
  torch_total = 0.0
  for r in rows:
    dx = r.get("dx") if r["needs_dx"] else None
    line = (f"{r['op']:<36}{r['count']:>3}{fmt(r['fwd']):>8}{fmt(dx):>8}"
            f"{fmt(r.get('dw')):>8}{fmt(r.get('fwd+bwd')):>9}{r['total']:>9.1f}"
            f"{100 * r['total'] / step_ms:>7.1f}%")
    if torch_rows and r["kind"] == "conv":
      t = next(convs)
      tdx = t["dx"] if r["needs_dx"] else None
      total = r["count"] * (t["fwd"] + (tdx or 0.0) + t["dw"])
      torch_total += total
      line += f"{fmt(t['fwd']):>11}{fmt(tdx):>7}{fmt(t['dw']):>7}{total:>8.1f}" \
              f"{total / r['total']:>8.2f}"
    lines.append(line)
  by_kind = collections.defaultdict(float)
  for r in rows:
    by_kind[r["kind"]] += r["total"]
  listed = sum(by_kind.values())
  lines.append("-" * len(lines[0]))
  for kind, total in by_kind.items():
    extra = ""
    if kind == "conv" and torch_rows:
      extra = f"   (torch, same convs: {torch_total:.1f} ms; ours/torch time " \
              f"{total / torch_total:.2f}x)"
    lines.append(f"{'all ' + kind:<36}{'':>43}{total:>9.1f}{100 * total / step_ms:>7.1f}%{extra}")
  lines.append(f"{'other (step - listed ops)':<36}{'':>43}{step_ms - listed:>9.1f}"
               f"{100 * (step_ms - listed) / step_ms:>7.1f}%")
  lines.append(f"{'full train step':<36}{'':>43}{step_ms:>9.1f}{100.0:>7.1f}%")
  return "\n".join(lines)


def main(argv):
  del argv
  dtype = jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32
  load = os.getloadavg()
  cpu = environment.cpu_info()["cpu"]
  rows, step_ms, (before, after), torch_rows = profile(
      FLAGS.model, FLAGS.batch_size, dtype, FLAGS.repeats, FLAGS.torch_python)
  print(f"{FLAGS.model}, batch {FLAGS.batch_size}, {FLAGS.dtype}; {cpu}, {os.cpu_count()} CPUs; "
        f"jax {jax.__version__} on {jax.default_backend()}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"load average {load[0]:.2f} -> {os.getloadavg()[0]:.2f}; full step {before:.1f} ms "
        f"before the ops, {after:.1f} ms after (their mean is 100%); ms per call, median of "
        f"{FLAGS.repeats}")
  print(table(rows, step_ms, torch_rows))
  if FLAGS.alternatives:
    print(f"\nXLA's conv against im2col_conv, ms per call (median of {FLAGS.repeats}); "
          f"load average now {os.getloadavg()[0]:.2f}:")
    print(alternatives_table(alternatives(rows, FLAGS.repeats)))


if __name__ == "__main__":
  define_flags()
  app.run(main)
