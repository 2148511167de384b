"""Speed, measured (`python -m rethinking.bench`; see its __main__ for the commands).

One module per thing measured:
  steps        train/eval/fused/bare steps per model, FLOPs against the matmul peak, PyTorch
  pipelines    the CIFAR input on the device and the ImageNet tf.data path
  epoch        a real `loop.run` epoch against steps x step time; a paper-length run
  scaling      the pmapped step on 1..N fake CPU devices
  environment  the machine: CPU model, ISA flags, cores, XLA flags, load, steal
  table        the printed table, and two runs side by side (--compare)
  device_check one script for a lent accelerator (launch/device_check.sh)
and their shared parts: timing (medians, budgets, FLOP counts), tasks (model specs, the
CIFAR task, synthetic data), cli (flags, every section in order).
"""
