"""Model hyper-parameters (gin-configurable) and the per-stack view of them."""

from __future__ import annotations

import dataclasses
import math

import gin
import jax.numpy as jnp

MEMORY_MODES = ("same_layer", "previous_layer")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attention")
DROPOUT_RNGS = ("hash", "threefry")


@dataclasses.dataclass(frozen=True)
class StackConfig:
  """One Transformer-XL stack: the universal module or a task module."""

  num_layers: int
  d_model: int
  num_heads: int
  head_dim: int
  d_ff: int
  # Logical axis name of this stack's width; task stacks use their own name so a
  # projection kernel (universal width x task width) can shard both dimensions.
  embed_axis: str
  # One W_R for the whole stack instead of one per layer (u and v stay per layer).
  share_position_projection: bool = False


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Ernie3Config:
  """ERNIE 3.0 sizes and switches. Defaults are a tiny CPU-sized model."""

  vocab_size: int = 8000
  num_segments: int = 4
  num_tasks: int = 8
  # Universal representation module (shared by every task).
  num_layers: int = 2
  d_model: int = 64
  num_heads: int = 4
  head_dim: int = 16
  d_ff: int = 256
  # Task-specific modules (NLU: bidirectional; NLG: causal with memory).
  nlu_layers: int = 2
  nlg_layers: int = 2
  task_d_model: int = 64
  task_num_heads: int = 4
  task_head_dim: int = 16
  task_d_ff: int = 256
  # Recurrence memory, used on the NLG path only.
  memory_len: int = 32
  memory_mode: str = "same_layer"
  share_position_projection: bool = False
  pre_layer_norm: bool = False
  layer_norm_epsilon: float = 1e-6
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  # Dropout masks from a counter hash ("hash", fast everywhere) or from
  # jax.random.bernoulli ("threefry"); see layers.hashed_keep_mask.
  dropout_rng: str = "hash"
  initializer_range: float = 0.02
  tie_embeddings: bool = True
  # Sentence reordering classifies permutations of up to this many segments.
  max_reorder_segments: int = 3
  num_distance_classes: int = 3
  # Fine-tuning classifier width (0: no classification head).
  num_labels: int = 0
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"

  def __post_init__(self):
    if self.memory_mode not in MEMORY_MODES:
      raise ValueError(
          f"Ernie3Config.memory_mode={self.memory_mode!r}; expected one of {MEMORY_MODES}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
          f"Ernie3Config.remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
    if self.dropout_rng not in DROPOUT_RNGS:
      raise ValueError(
          f"Ernie3Config.dropout_rng={self.dropout_rng!r}; expected one of {DROPOUT_RNGS}")
    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "head_dim", "d_ff",
                 "nlu_layers", "nlg_layers", "task_d_model", "task_num_heads",
                 "task_head_dim", "task_d_ff", "num_segments", "num_tasks"):
      if getattr(self, name) <= 0:
        raise ValueError(f"Ernie3Config.{name} must be positive, got {getattr(self, name)}")
    if self.memory_len < 0:
      raise ValueError(f"Ernie3Config.memory_len must be >= 0, got {self.memory_len}")
    if self.d_model % 2 or self.task_d_model % 2:
      raise ValueError("d_model and task_d_model must be even (sinusoidal encodings).")
    if self.max_reorder_segments < 1:
      raise ValueError("Ernie3Config.max_reorder_segments must be >= 1")

  @property
  def num_reorder_classes(self) -> int:
    """Sum over n=1..m of n!: every permutation of every segment count."""
    return sum(math.factorial(n) for n in range(1, self.max_reorder_segments + 1))

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weights_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def universal_stack(self) -> StackConfig:
    return StackConfig(self.num_layers, self.d_model, self.num_heads, self.head_dim,
                       self.d_ff, "embed", self.share_position_projection)

  def nlu_stack(self) -> StackConfig:
    return StackConfig(self.nlu_layers, self.task_d_model, self.task_num_heads,
                       self.task_head_dim, self.task_d_ff, "task_embed",
                       self.share_position_projection)

  def nlg_stack(self) -> StackConfig:
    return StackConfig(self.nlg_layers, self.task_d_model, self.task_num_heads,
                       self.task_head_dim, self.task_d_ff, "task_embed",
                       self.share_position_projection)
