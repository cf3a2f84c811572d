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
  lane 0: b * A**i        lane 1: b**2 * C**i        (all modulo 2**32)
with odd bases A and C and i the element's row-major index. The weights are odd, so a
change to any one element always changes lane 0, and lane 1 is nonlinear in b, so
changes that cancel in one lane do not cancel in the other. The weight of i factors
over dimensions (A**i = prod_d A**(i_d * stride_d)), so a shard's sum is a chain of
vector contractions: one pass over the data, no per-element index arithmetic.
(Powers of an odd base repeat every 2**30 elements at the latest; in arrays larger than
that, a swap of two elements exactly 2**30 apart would go unnoticed.)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ernie3_jax.parallel import multihost

RECORD_VERSION = 2
BASES = (0x9E3779B1, 0x85EBCA77)  # A and C: odd, from the golden ratio and murmur3
_BLOCK = 1 << 24  # elements summed at a time (bounds the temporaries)


@functools.lru_cache(maxsize=4096)  # a state repeats shapes (parameters, both moments)
def _powers(base: int, start: int, count: int, stride: int) -> np.ndarray:
  """[base**((start + k) * stride) for k < count] modulo 2**32, as uint32."""
  step = pow(base, stride, 1 << 32)
  out = np.full(count, step, np.uint32)
  out[0] = pow(base, start * stride, 1 << 32)
  out = np.cumprod(out, dtype=np.uint32)  # products wrap modulo 2**32
  out.flags.writeable = False
  return out


_PREFIX: dict[int, np.ndarray] = {}


def _prefix_powers(base: int, count: int) -> np.ndarray:
  """[base**i for i < count] modulo 2**32: the weights of a whole array, flattened.
  Grown by doubling and kept, so a state's arrays share one vector per base."""
  have = _PREFIX.get(base)
  if have is None or have.size < count:
    size = min(_BLOCK, max(count, 2 * (0 if have is None else have.size), 1 << 16))
    have = _PREFIX[base] = _powers(base, 0, size, 1)
  return have[:count]


def _raw_bits(x: np.ndarray) -> np.ndarray:
  """The elements' bytes as uint32 (dtypes of 1, 2 or 4 bytes)."""
  unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}.get(x.dtype.itemsize)
  if unsigned is None:
    raise TypeError(f"checksums take 1-, 2- or 4-byte dtypes, not {x.dtype}")
  bits = np.ascontiguousarray(x).view(unsigned)
  return bits if unsigned is np.uint32 else bits.astype(np.uint32)


def _finite(data: np.ndarray) -> bool:
  # jnp.issubdtype knows bfloat16 and the other ml_dtypes floats; numpy's does not.
  return bool(np.isfinite(data).all()) if jnp.issubdtype(data.dtype, jnp.inexact) else True


def _dot(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """Contracts the last axis; uint32 products and sums wrap modulo 2**32 (einsum's
  loop is faster than matmul's for integers)."""
  return np.einsum("...i,i->...", values, weights)


def _whole_terms(data: np.ndarray) -> tuple[int, int, bool]:
  """(lane 0, lane 1, finite) of a whole array held here: its row-major index is its
  flat position, so one weight vector per base serves every array."""
  bits = _raw_bits(data).reshape(-1)
  lanes = [0, 0]
  for offset in range(0, bits.size, _BLOCK):
    block = bits[offset:offset + _BLOCK]
    for lane, (base, values) in enumerate(zip(BASES, (block, block * block))):
      shift = pow(base, offset, 1 << 32)  # base**(offset + k) = base**offset * base**k
      total = int(_dot(values, _prefix_powers(base, block.size)))
      lanes[lane] = (lanes[lane] + shift * total) % (1 << 32)
  return lanes[0], lanes[1], _finite(data)


def _shard_terms(data: np.ndarray, index: tuple[slice, ...], shape: tuple[int, ...]
                 ) -> tuple[int, int, bool]:
  """(lane 0, lane 1, finite) of one shard `data` = global[index] of an array `shape`."""
  if data.ndim == 0 or data.size == 0:
    return _whole_terms(data) if data.size else (0, 0, True)
  starts = [sl.indices(n)[0] for sl, n in zip(index, shape)]
  strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
  lanes = [0, 0]
  rows = max(1, _BLOCK // max(1, math.prod(data.shape[1:])))
  for r in range(0, data.shape[0], rows):
    bits = _raw_bits(data[r:r + rows])
    for lane, (base, values) in enumerate(zip(BASES, (bits, bits * bits))):
      for d in reversed(range(values.ndim)):
        values = _dot(values, _powers(base, starts[d] + (r if d == 0 else 0),
                                      values.shape[d], strides[d]))
      lanes[lane] = (lanes[lane] + int(values)) % (1 << 32)
  return lanes[0], lanes[1], _finite(data)


def _local_terms(leaf: Any) -> tuple[int, int, bool]:
  """This process's share of one array's sums: the shards whose first replica it holds."""
  if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
    return _whole_terms(np.asarray(leaf))
  lane0 = lane1 = 0
  finite = True
  for shard in leaf.addressable_shards:
    if shard.replica_id != 0:
      continue
    a, b, ok = _shard_terms(np.asarray(shard.data), shard.index, leaf.shape)
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
