"""The ERNIE 3.0 model: a universal Transformer-XL backbone and two task stacks."""

from ernie3_jax.model.config import Ernie3Config, StackConfig
from ernie3_jax.model.ernie3 import Ernie3
from ernie3_jax.model.recurrence_memory import init_memory

__all__ = ["Ernie3", "Ernie3Config", "StackConfig", "init_memory"]
