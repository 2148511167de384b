r"""Speed, measured: train and eval steps, input pipelines, a real epoch, several devices.

  python -m rethinking.bench --json=/tmp/bench.json          # everything: ~8 min on 2 CPU cores
  python -m rethinking.bench --models=mlp_1x512,alexnet_small --steps=20
  python -m rethinking.bench --quick --json=/tmp/quick.json  # minutes: mlp_1x512, every section
  python -m rethinking.bench --torch_python=/path/to/torch-env/bin/python  # PyTorch measured too
  python -m rethinking.bench --compare=amd.json,intel.json   # two runs side by side

Models are `name[@size][/batch]`: the CIFAR models at 28x28 (the paper's crop), batch
128, and Inception V3 at 299x299 (batch 8) and at 75x75 (its smallest input, batch 32:
CPU-sized steps). Per model (rethinking/bench/steps.py): compile s, train img/s (the real
path, median over synchronized calls), fused img/s (several steps per call; MLPs on a
CPU), step img/s (the bare train step), eval img/s, GFLOP/step from XLA's cost analysis
and its share of a float32 matmul peak timed in the same run, and eager PyTorch's
img/s (--torch_python measures it here; else issue 7's reference figures).

Then: the CIFAR input pipeline alone and its share of each model's step, the ImageNet
tf.data pipeline on generated JPEG files (pipelines.py), a real training epoch
(`loop.run`, evaluation excluded) against steps x step time (epoch.py), and the pmapped
step on 1..N fake CPU devices (scaling.py: the code path, not speed).

The CPU model, its ISA flags and cores, the XLA flags and rethinking's CPU defaults in
effect, the load average before and after and the share of CPU time the hypervisor
stole are recorded (environment.py): on a shared machine, rerun when it is idle.
"""

from rethinking.bench import cli

if __name__ == "__main__":
  cli.run()
