r"""Kill a real training run at random moments, resume it, and check that nothing was lost.

  python scripts/kill_resume.py                      # 20 SIGKILLs at random moments
  python scripts/kill_resume.py --signal=TERM        # SIGTERM: exit 75 (0 if done), no traceback
  python scripts/kill_resume.py --points=50 --seed=3 --keep

One uninterrupted run of the command line is the reference (a tiny MLP with random
labels, random crops and flips, dropout, a checkpoint every 3 steps and at each of
4 epoch ends). Then, for each point, the same command is started in a fresh
workdir and sent the signal at a random moment. A quarter of the moments are drawn
uniformly over the start-up (Python's imports, data loading, compilation: from 0 to
when the reference's first checkpoint appeared); the others wait for a checkpoint
at or past a random step (1..15) and then a random 0-0.5 s, which lands in a step,
a checkpoint write, an evaluation or after the last row (the start-up's length
varies with the machine's load; the training phase is what must be hit). Then the
same command runs again to the end. Each point passes when:

  - SIGKILL: the resumed run exits 0; SIGTERM/SIGINT: the signalled run exits 75,
    or 0 if it had finished, with no traceback;
  - no `*.orbax-checkpoint-tmp*` is left in checkpoints/ after the resume;
  - the final parameters, optimizer state and BatchNorm statistics equal the
    reference's bit for bit, and metrics.jsonl has the same rows (wall_time aside),
    each epoch exactly once.

Prints one line per point and a summary; exits 1 if any point failed.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10_10k.npz"
ARG = "model=mlp_1x512,corruption=random_labels,augment=crop_flip"
EPOCHS, STEPS_PER_EPOCH = 4, 4  # 256 images, batch 64.
OVERRIDES = {"num_train": 256, "num_test": 200, "batch_size": 64, "num_epochs": EPOCHS,
             "dropout_rate": 0.2, "checkpoint_every_steps": 3, "log_every_steps": 2,
             "eval_batch_size": 100}


def command(workdir: pathlib.Path, dataset: str) -> list[str]:
  flags = dict(OVERRIDES, dataset=dataset)
  return [sys.executable, "-m", "rethinking.main", f"--config=configs/cifar10.py:{ARG}",
          f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in flags.items())]


def run_to_end(workdir, dataset) -> subprocess.CompletedProcess:
  return subprocess.run(command(workdir, dataset), cwd=REPO, capture_output=True, text=True,
                        timeout=600)


def checkpoint_steps(workdir) -> list[int]:
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def leftovers(workdir) -> list[str]:
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(p.name for p in d.iterdir() if "orbax-checkpoint-tmp" in p.name) \
      if d.exists() else []


def final_state(workdir) -> list:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step = checkpoint_steps(workdir)[-1]
  tree = ocp.StandardCheckpointer().restore(
      (pathlib.Path(workdir) / "checkpoints" / str(step) / "state").absolute())

  def leaves(t, prefix=""):
    if isinstance(t, dict):
      for k in sorted(t):
        yield from leaves(t[k], f"{prefix}/{k}")
    else:
      yield prefix, np.asarray(t)
  return step, list(leaves(tree))


def rows(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [{k: v for k, v in json.loads(line).items() if k != "wall_time"}
          for line in path.read_text().splitlines()]


def compare(workdir, reference) -> str | None:
  """None if the run equals the reference, else what differs."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  step, leaves = final_state(workdir)
  ref_step, ref_leaves = final_state(reference)
  if step != ref_step:
    return f"final checkpoint at step {step}, reference {ref_step}"
  for (name, a), (_, b) in zip(leaves, ref_leaves):
    if a.shape != b.shape or not np.array_equal(a, b):
      return f"{name} differs"
  got, want = rows(workdir), rows(reference)
  if [r["epoch"] for r in got] != list(range(1, EPOCHS + 1)):
    return f"metrics rows for epochs {[r['epoch'] for r in got]}"
  if got != want:
    return "metrics rows differ from the reference's"
  return None


def one_point(i, moment, sig, root, dataset, reference) -> tuple[bool, str, str]:
  """moment: ("time", seconds after the start) or ("step", k, seconds after a
  checkpoint at or past step k appeared)."""
  workdir = root / f"point_{i:02d}"
  start = time.time()
  proc = subprocess.Popen(command(workdir, dataset), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  if moment[0] == "time":
    time.sleep(moment[1])
  else:
    while proc.poll() is None and not any(s >= moment[1] for s in checkpoint_steps(workdir)):
      time.sleep(0.005)
    time.sleep(moment[2])
  finished_first = proc.poll() is not None
  at = checkpoint_steps(workdir)
  sent = time.time()
  if not finished_first:
    proc.send_signal(sig)
  try:
    _, stderr = proc.communicate(timeout=300)
  except subprocess.TimeoutExpired:
    proc.kill()
    return False, f"no exit within 300 s of {sig.name}", "hung"
  rc = proc.returncode
  phase = ("finished first" if finished_first else "before the first checkpoint" if not at
           else "after the last checkpoint" if at[-1] == EPOCHS * STEPS_PER_EPOCH
           else "while training")
  aim = (f"at {moment[1]:.2f} s" if moment[0] == "time" else
         f"{moment[2]:.2f} s after checkpoint >= {moment[1]}")
  where = (f"{aim} (t={sent - start:5.2f} s): last checkpoint {at[-1] if at else '-'}, "
           f"exit {rc}")
  if sig != signal.SIGKILL:
    done = len(rows(workdir)) == EPOCHS
    if rc not in (75, 0) or (rc == 0 and not done):
      return False, f"{where}: expected 75 (or 0 when done)\n{stderr[-2000:]}", phase
    if "Traceback" in stderr:
      return False, f"{where}: a traceback\n{stderr[-3000:]}", phase
    if leftovers(workdir):
      return False, f"{where}: left {leftovers(workdir)}", phase
  elif not finished_first and rc != -signal.SIGKILL:
    return False, f"{where}: expected -9", phase
  resumed = run_to_end(workdir, dataset)
  if resumed.returncode != 0:
    return False, f"{where}: resume exited {resumed.returncode}\n{resumed.stderr[-3000:]}", phase
  if leftovers(workdir):
    return False, f"{where}: left {leftovers(workdir)} after the resume", phase
  if "damaged" in resumed.stderr:
    return False, f"{where}: a checkpoint reported damaged\n{resumed.stderr[-2000:]}", phase
  diff = compare(workdir, reference)
  if diff:
    return False, f"{where}: {diff}", phase
  resumed_from = next((l.split("Resuming from step ")[1].split()[0]
                       for l in resumed.stderr.splitlines() if "Resuming from step" in l), "0")
  return True, f"{where}, resumed from step {resumed_from}: identical", phase


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--points", type=int, default=20, help="signal moments (default 20)")
  parser.add_argument("--signal", default="KILL", choices=("KILL", "TERM", "INT"))
  parser.add_argument("--seed", type=int, default=0, help="seeds the moments")
  parser.add_argument("--dataset", default=str(DEFAULT_DATA),
                      help="an .npz in the Keras layout (default ../shared/data/cifar10_10k.npz)")
  parser.add_argument("--root", default=None, help="where the workdirs go (default: a temp dir)")
  parser.add_argument("--keep", action="store_true", help="keep the workdirs")
  args = parser.parse_args(argv)
  if not os.path.exists(args.dataset):
    print(f"error: --dataset={args.dataset}: file not found", file=sys.stderr)
    return 2
  sig = signal.Signals[f"SIG{args.signal}"]
  root = pathlib.Path(args.root or tempfile.mkdtemp(prefix="kill_resume_"))
  root.mkdir(parents=True, exist_ok=True)
  reference = root / "reference"
  shutil.rmtree(reference, ignore_errors=True)
  t0 = time.time()
  proc = subprocess.Popen(command(reference, args.dataset), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  while proc.poll() is None and not checkpoint_steps(reference):
    time.sleep(0.005)
  startup = time.time() - t0
  _, stderr = proc.communicate(timeout=600)
  duration = time.time() - t0
  if proc.returncode != 0:
    print(f"error: the reference run failed ({proc.returncode}):\n{stderr[-3000:]}",
          file=sys.stderr)
    return 1
  total = EPOCHS * STEPS_PER_EPOCH
  print(f"reference: {EPOCHS} epochs x {STEPS_PER_EPOCH} steps in {duration:.1f} s (first "
        f"checkpoint at {startup:.1f} s); SIG{args.signal} at {args.points} moments (seed "
        f"{args.seed})", flush=True)
  rng = random.Random(args.seed)
  moments = [("time", rng.uniform(0, startup)) if rng.random() < 0.25 else
             ("step", rng.randint(1, total - 1), rng.uniform(0, 0.5))
             for _ in range(args.points)]
  failures = 0
  phases: dict[str, int] = {}
  for i, moment in enumerate(moments):
    ok, text, phase = one_point(i, moment, sig, root, args.dataset, reference)
    phases[phase] = phases.get(phase, 0) + 1
    failures += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {i + 1:2d}/{len(moments)} {text}", flush=True)
    if ok and not args.keep:
      shutil.rmtree(root / f"point_{i:02d}", ignore_errors=True)
  print(f"{len(moments) - failures}/{len(moments)} passed (SIG{args.signal}); signals landed: "
        + ", ".join(f"{n} {p}" for p, n in sorted(phases.items())) +
        f"; {time.time() - t0:.0f} s in all")
  if not args.keep and not failures:
    shutil.rmtree(root, ignore_errors=True)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
