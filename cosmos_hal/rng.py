"""Seeding, counter-based architecture-invariant sampling, and RNG state capture.

Why counter-based: a GPU's and an NPU's device generators are different algorithms, and
a stateful stream shifts whenever any code draws one extra number (upstream's random EMA
init draws ~4e9). Here every draw is a pure function of a key
``(seed, stream, step, rank, index)`` and the element's position: Philox4x32-10 computed
with integer numpy arithmetic on the CPU (bit-exact on every host), turned into floats in
float64, cast once, then moved to the device. The same key gives the same bits on CPU,
GPU and NPU, whatever was drawn before.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True)
class Key:
    """Names one draw. ``stream`` separates purposes ("noise", "sigma", "data_order", ...)."""

    seed: int
    stream: str
    step: int = 0
    rank: int = 0
    index: int = 0

    def words(self) -> tuple[int, int, int, int]:
        """128 bits from the key: Philox's 64-bit key and the upper half of its counter."""
        blob = struct.pack("<qqqq", self.seed, self.step, self.rank, self.index) + self.stream.encode()
        digest = hashlib.blake2b(blob, digest_size=16).digest()
        return struct.unpack("<4I", digest)


def _philox4x32(counter_lo: np.ndarray, key: tuple[int, int, int, int]) -> np.ndarray:
    """Philox4x32-10 (Salmon et al. 2011) on counters (lo, 0, k2, k3); returns (n, 4) uint32."""
    n = counter_lo.shape[0]
    c0 = (counter_lo & _MASK32).astype(np.uint32)
    c1 = (counter_lo >> np.uint64(32)).astype(np.uint32)
    c2 = np.full(n, key[2], dtype=np.uint32)
    c3 = np.full(n, key[3], dtype=np.uint32)
    k0, k1 = np.uint32(key[0]), np.uint32(key[1])
    with np.errstate(over="ignore"):
        for _ in range(10):
            p0 = _M0 * c0.astype(np.uint64)
            p1 = _M1 * c2.astype(np.uint64)
            hi0, lo0 = (p0 >> np.uint64(32)).astype(np.uint32), (p0 & _MASK32).astype(np.uint32)
            hi1, lo1 = (p1 >> np.uint64(32)).astype(np.uint32), (p1 & _MASK32).astype(np.uint32)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            k0 = np.uint32(k0 + _W0)
            k1 = np.uint32(k1 + _W1)
    return np.stack([c0, c1, c2, c3], axis=1)


def _uniform64(key: Key, n: int) -> np.ndarray:
    """n float64 uniforms in (0, 1), 53 bits each, element i from counter i // 2."""
    blocks = (n + 1) // 2
    words = _philox4x32(np.arange(blocks, dtype=np.uint64), key.words()).astype(np.uint64)
    hi = np.concatenate([words[:, 0:1], words[:, 2:3]], axis=1).reshape(-1)
    lo = np.concatenate([words[:, 1:2], words[:, 3:4]], axis=1).reshape(-1)
    bits53 = ((hi << np.uint64(21)) ^ (lo >> np.uint64(11))) & np.uint64((1 << 53) - 1)
    return ((bits53.astype(np.float64) + 0.5) / float(1 << 53))[:n]


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def _finish(values: np.ndarray, shape, dtype, device) -> torch.Tensor:
    out = torch.from_numpy(np.ascontiguousarray(values).reshape(shape)).to(dtype)
    return out.to(device) if device is not None else out


def uniform(key: Key, shape, *, dtype=torch.float32, device=None, low=0.0, high=1.0) -> torch.Tensor:
    u = _uniform64(key, _numel(shape))
    return _finish(low + (high - low) * u, shape, dtype, device)


def normal(key: Key, shape, *, dtype=torch.float32, device=None, mean=0.0, std=1.0) -> torch.Tensor:
    """Standard normals by Box-Muller in float64 (both outputs used)."""
    n = _numel(shape)
    u = _uniform64(key, n + (n % 2)).reshape(-1, 2)
    r = np.sqrt(-2.0 * np.log(u[:, 0]))
    theta = 2.0 * np.pi * u[:, 1]
    z = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1).reshape(-1)[:n]
    return _finish(mean + std * z, shape, dtype, device)


def integers(key: Key, low: int, high: int, shape=(), *, device=None) -> torch.Tensor:
    """Integers in [low, high); the bias of flooring a 53-bit uniform is below 2**-21 for any
    range under 2**32."""
    if high <= low:
        raise ValueError(f"integers: need low < high, got low={low}, high={high}")
    u = _uniform64(key, _numel(shape))
    vals = low + np.floor(u * (high - low)).astype(np.int64)
    return _finish(np.minimum(vals, high - 1), shape, torch.int64, device)


def permutation(key: Key, n: int, *, device=None) -> torch.Tensor:
    """A permutation of range(n): argsort of n independent uniforms (ties have p ~ 2**-53)."""
    order = np.argsort(_uniform64(key, n), kind="stable")
    return _finish(order.astype(np.int64), (n,), torch.int64, device)


def bernoulli(key: Key, p: float, shape=(), *, device=None) -> torch.Tensor:
    return _finish(_uniform64(key, _numel(shape)) < p, shape, torch.bool, device)


def scalar_uniform(key: Key) -> float:
    """One float in (0, 1), for host-side decisions (crop offsets, dropout choices)."""
    return float(_uniform64(key, 1)[0])


# -- stateful generators: seeding and checkpoint capture -------------------------------------


def seed_everything(seed: int, rank: int = 0, backend=None) -> int:
    """Seed python, numpy, torch and the device with ``seed + rank`` (upstream's convention).

    Returns the effective seed. Counter-based draws above do not depend on this; it governs
    only code we do not own (library initialisers, dropout inside third-party modules).
    """
    import cosmos_hal.backend as _backend

    effective = int(seed) + int(rank)
    random.seed(effective)
    np.random.seed(effective % 2**32)
    torch.manual_seed(effective)
    (backend or _backend.current()).manual_seed(effective)
    return effective


def capture_state(backend=None) -> dict[str, Any]:
    """Every generator's state, for a checkpoint."""
    import cosmos_hal.backend as _backend

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "device": (backend or _backend.current()).rng_state(),
    }


def restore_state(state: dict[str, Any], backend=None) -> None:
    """Put back what :func:`capture_state` returned."""
    import cosmos_hal.backend as _backend

    random.setstate(_as_python_state(state["python"]))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    (backend or _backend.current()).set_rng_state(state.get("device", {}))


def _as_python_state(state):
    # torch.save/load turns the inner tuple into a list; random.setstate wants tuples.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
