"""Sections 4 and 5 of the paper, independent of the training code.

- expressivity: Theorem 1's depth-2 ReLU network that fits any n points (numpy float64).
- kernels: exact (Cholesky) and blocked conjugate-gradient kernel interpolation, the
  minimum RKHS norm, and a memory plan (JAX; float64 on CPU inside a local x64 scope).
- features: class-balanced image subsets; raw, Gabor-wavelet and random-convolution features.
- min_norm: SGD from zero on underdetermined least squares reaches X^T (X X^T)^{-1} y.

The command lines are `python -m rethinking.expressivity` and `python -m rethinking.kernels`.
"""
