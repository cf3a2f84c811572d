"""Per-array checksums and finiteness of a train state, to verify checkpoints.

Orbax verifies no array contents on restore (a flipped byte restores as a wrong
value), so each checkpoint carries a record written here at save time: two 32-bit
checksums and a finiteness flag per array. The checksums are sums modulo 2**32 of
per-element terms, so each process sums the shards it holds (each distinct shard is
counted once, by the process holding its first replica) and the partial sums add
up across processes: the record is the same for any mesh or process count, and a
checkpoint written on one mesh verifies after restoring onto another. The sums run
on the host in numpy, so there is nothing to compile.

Term of element i with raw bits b (the element's bytes as an unsigned integer):
  lane 0: b * (mix(i) | 1)          -- a change in one element always changes it
  lane 1: mix(b ^ mix(i))           -- nonlinear, catches changes that cancel in lane 0
where mix is the murmur3 32-bit finaliser and i the element's row-major index.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ernie3_jax.parallel import multihost

RECORD_VERSION = 1
_BLOCK = 1 << 20  # elements hashed at a time (bounds the temporaries)


def _mix(x: np.ndarray) -> np.ndarray:
  x = x ^ (x >> np.uint32(16))
  x = x * np.uint32(0x85EBCA6B)
  x = x ^ (x >> np.uint32(13))
  x = x * np.uint32(0xC2B2AE35)
  return x ^ (x >> np.uint32(16))


def _raw_bits(x: np.ndarray) -> np.ndarray:
  """The elements' bytes as uint32 (dtypes of 1, 2 or 4 bytes)."""
  unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}.get(x.dtype.itemsize)
  if unsigned is None:
    raise TypeError(f"checksums take 1-, 2- or 4-byte dtypes, not {x.dtype}")
  return np.ascontiguousarray(x).view(unsigned).astype(np.uint32)


def _piece_terms(data: np.ndarray, index: tuple[slice, ...], shape: tuple[int, ...]
                 ) -> tuple[int, int, bool]:
  """(lane 0, lane 1, finite) summed over one piece `data` = global[index]."""
  # jnp.issubdtype knows bfloat16 and the other ml_dtypes floats; numpy's does not.
  finite = bool(np.isfinite(data).all()) if jnp.issubdtype(data.dtype, jnp.inexact) else True
  if data.ndim == 0:
    data, index, shape = data.reshape(1), (slice(0, 1),), (1,)
  strides = [math.prod(shape[d + 1:]) % (1 << 32) for d in range(len(shape))]
  starts = [sl.indices(n)[0] for sl, n in zip(index, shape)]
  # Global row-major index of every element, from the piece's offset in each dimension.
  inner = np.zeros(data.shape[1:], np.uint32)
  for d in range(1, data.ndim):
    ax = (np.arange(data.shape[d], dtype=np.uint32) + np.uint32(starts[d])) * np.uint32(
        strides[d])
    inner = inner + ax.reshape([-1 if e == d - 1 else 1 for e in range(data.ndim - 1)])
  lane0 = lane1 = np.uint32(0)
  rows = max(1, _BLOCK // max(1, inner.size))
  for r in range(0, data.shape[0], rows):
    block = data[r:r + rows]
    lead = (np.arange(block.shape[0], dtype=np.uint32) + np.uint32(starts[0] + r)) * np.uint32(
        strides[0])
    salt = _mix(lead.reshape((-1,) + (1,) * inner.ndim) + inner)
    bits = _raw_bits(block)
    lane0 = lane0 + np.sum(bits * (salt | np.uint32(1)), dtype=np.uint32)
    lane1 = lane1 + np.sum(_mix(bits ^ salt), dtype=np.uint32)
  return int(lane0), int(lane1), finite


def _local_terms(leaf: Any) -> tuple[int, int, bool]:
  """This process's share of one array's sums: the shards whose first replica it holds."""
  if not isinstance(leaf, jax.Array):
    leaf = np.asarray(leaf)
    return _piece_terms(leaf, tuple(slice(None) for _ in leaf.shape), leaf.shape)
  lane0 = lane1 = 0
  finite = True
  for shard in leaf.addressable_shards:
    if shard.replica_id != 0:
      continue
    a, b, ok = _piece_terms(np.asarray(shard.data), shard.index, leaf.shape)
    lane0, lane1, finite = (lane0 + a) % (1 << 32), (lane1 + b) % (1 << 32), finite and ok
  return lane0, lane1, finite


def array_name(key_path) -> str:
  """"params['embedder']['token']['embedding']" for dict, attribute and index keys alike
  (a saved tree has dicts where the live state has dataclasses and named tuples)."""
  parts = []
  for entry in key_path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        value = getattr(entry, attr)
        break
    else:
      value = str(entry)
    parts.append(f"[{value}]" if isinstance(value, int) else f"[{str(value)!r}]")
  if parts and parts[0].startswith("['"):
    parts[0] = parts[0][2:-2]  # the top-level field reads as a name: params[...]
  return "".join(parts)


def array_names(tree: Any) -> list[str]:
  return [array_name(k) for k, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def record(state: Any) -> dict:
  """{"version", "arrays": {name: [lane 0, lane 1]}, "nonfinite": [names]} of `state`.

  A collective in multi-process runs (every process calls it with the global state).
  """
  names = array_names(state)
  local = [_local_terms(leaf) for leaf in jax.tree_util.tree_leaves(state)]
  everyone = multihost.allgather_json(local)
  arrays, nonfinite = {}, []
  for i, name in enumerate(names):
    arrays[name] = [sum(p[i][0] for p in everyone) % (1 << 32),
                    sum(p[i][1] for p in everyone) % (1 << 32)]
    if not all(p[i][2] for p in everyone):
      nonfinite.append(name)
  return {"version": RECORD_VERSION, "arrays": arrays, "nonfinite": nonfinite}


def differences(saved: dict, restored: dict) -> list[str]:
  """Arrays whose restored contents differ from the record saved with them."""
  if saved.get("version") != RECORD_VERSION:
    return [f"the integrity record has version {saved.get('version')!r}, expected "
            f"{RECORD_VERSION}"]
  want, have = saved["arrays"], restored["arrays"]
  out = [f"{n} does not match its checksum" for n in want if n in have and have[n] != want[n]]
  out += [f"{n} is in the integrity record but was not restored" for n in want
          if n not in have]
  return out
