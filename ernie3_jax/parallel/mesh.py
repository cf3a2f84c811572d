"""A named device mesh (data, fsdp, tensor) and the logical axis rules.

Layer code names axes logically ("batch", "embed", "heads", ...); the mapping to
mesh axes is data here, overridable from gin, so a new parallelism layout is a
config change, not a model change.
"""

from __future__ import annotations

import math
from typing import Sequence

import gin
import jax
import numpy as np
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")

# Priority order matters: an array dimension takes the first rule whose mesh axes
# are still free in that array, so activations shard their batch over data x fsdp
# and leave the width unsharded, while parameters shard their width over fsdp.
DEFAULT_LOGICAL_AXIS_RULES: tuple[tuple[str, object], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("task_embed", "fsdp"),
    ("task_embed_out", None),
    ("kv", None),
    ("length", None),
    ("kv_length", None),
    ("layers", None),
    ("segments", None),
    ("tasks", None),
    ("classes", None),
)


@gin.configurable
def logical_axis_rules(rules: Sequence[Sequence] | None = None) -> tuple[tuple[str, object], ...]:
  """The rules in force (gin: `logical_axis_rules.rules = [...]`)."""
  if rules is None:
    return DEFAULT_LOGICAL_AXIS_RULES
  return tuple((str(name), tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in rules)


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
  """Fills one -1 entry so that data * fsdp * tensor == num_devices."""
  shape = [data, fsdp, tensor]
  unknown = [i for i, s in enumerate(shape) if s == -1]
  if len(unknown) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got data={data}, fsdp={fsdp}, "
                     f"tensor={tensor}")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"Mesh axis sizes must be positive or -1, got {shape}")
  known = math.prod(s for s in shape if s != -1)
  if unknown:
    if num_devices % known:
      raise ValueError(f"Cannot fill the -1 mesh axis: {num_devices} devices are not "
                       f"divisible by the other axes' product {known} "
                       f"(data={data}, fsdp={fsdp}, tensor={tensor})")
    shape[unknown[0]] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"Mesh data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} = "
                     f"{math.prod(shape)} devices, but {num_devices} are available; "
                     "set one axis to -1 to fill the rest")
  return tuple(shape)


@gin.configurable
def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None,
              num_devices: int | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all devices, or the
  first `num_devices` of them)."""
  devices = list(jax.devices() if devices is None else devices)
  if num_devices is not None:
    if not 0 < num_devices <= len(devices):
      raise ValueError(f"make_mesh.num_devices={num_devices}, but {len(devices)} devices "
                       "are available")
    devices = devices[:num_devices]
  shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
  try:
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # Topology-aware layout is unavailable for some device sets.
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)
