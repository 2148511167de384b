"""rethinking: Zhang et al. (ICLR 2017) randomization tests in JAX/Flax."""
