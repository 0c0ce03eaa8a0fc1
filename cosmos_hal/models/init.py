"""Build modules without random init, and initialise them reproducibly on any hardware.

Why: constructing an ``nn.Module`` normally draws its initial weights from torch's global
generator, which (a) shifts every later draw of that generator, and (b) for big models costs
seconds to minutes only to be overwritten by a checkpoint. So models are built on the meta
device (no draws), then either receive checkpoint tensors or are filled here:

- ``"rng"``: every tensor from ``cosmos_hal.rng`` keyed by (seed, parameter name): the same
  bits on CPU, GPU and NPU; about 0.3 us per element, so meant for small models.
- ``"torch"``: a private ``torch.Generator`` on the CPU seeded with ``seed`` (deterministic,
  fast, leaves the global generator alone); for big models with random weights (benchmarks).
- ``"auto"``: "rng" up to ``RNG_INIT_MAX_PARAMS`` parameters, "torch" above.

The rule follows PyTorch's own defaults in spirit: matrices and conv kernels U(-b, b) with
b = 1/sqrt(fan_in) (what ``nn.Linear``'s kaiming_uniform(a=sqrt(5)) gives), norm scales
(``weight``/``gamma`` vectors) one, biases zero.
"""

from __future__ import annotations

import contextlib
import math
import zlib

import torch
from torch import nn

from cosmos_hal import rng

RNG_INIT_MAX_PARAMS = 50_000_000


@contextlib.contextmanager
def on_meta_device():
    """Construct modules with meta tensors: no memory, no random draws."""
    with torch.device("meta"):
        yield


@contextlib.contextmanager
def parameters_on_meta_device():
    """Construct modules with meta *parameters* but real buffers (as accelerate's
    ``init_empty_weights(include_buffers=False)``): for models whose buffers are constants computed
    in ``__init__`` (the Cosmos 1.0 VAE's wavelet filters), which materialize_ then keeps."""
    original = nn.Module.register_parameter

    def register_parameter(module, name, param):
        original(module, name, param)
        if param is not None:
            kwargs = {"requires_grad": param.requires_grad}
            module._parameters[name] = type(param)(param.to("meta"), **kwargs)

    nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _fan_in(shape: torch.Size) -> int:
    return max(1, math.prod(shape[1:]))


def _param_rule(name: str, shape: torch.Size) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("bias", "beta"):
        return "zeros"
    if leaf == "gamma" or (leaf == "weight" and len(shape) == 1):
        return "ones"
    if leaf.startswith("pos_emb_"):
        # N(0, 0.02) as cosmos-predict1's LearnablePosEmbAxis (module/position_embedding.py L210-216:
        # trunc_normal_(std=0.02)); diffusers' zeros would make the embedding's normalize() give
        # ~1/eps gradients on the first step
        return "normal_0.02"
    if len(shape) >= 2:
        return "uniform"
    raise ValueError(f"init: no rule for parameter {name!r} of shape {tuple(shape)}")


def resolve_method(method: str, n_params: int) -> str:
    """The init method for ``n_params`` parameters ("auto": "rng" up to RNG_INIT_MAX_PARAMS)."""
    if method not in ("auto", "rng", "torch"):
        raise ValueError(f"init method must be 'auto', 'rng' or 'torch', got {method!r}")
    if method == "auto":
        return "rng" if n_params <= RNG_INIT_MAX_PARAMS else "torch"
    return method


def init_values(named_shapes, *, seed: int = 0, method: str = "auto"):
    """(name, fp32 CPU tensor) for each ``(name, shape)`` in order: the values ``materialize_``
    gives. Why a generator: a sharded build (train/sharded_init.py) fills each rank's shards
    one full tensor at a time from the same values. "torch" draws depend on the order, so
    ``named_shapes`` must be the module's ``named_parameters()`` order."""
    named_shapes = [(n, torch.Size(s)) for n, s in named_shapes]
    method = resolve_method(method, sum(s.numel() for _, s in named_shapes))
    gen = torch.Generator(device="cpu").manual_seed(seed) if method == "torch" else None
    for name, shape in named_shapes:
        rule = _param_rule(name, shape)
        key = rng.Key(seed, "init", index=zlib.crc32(name.encode()))
        if rule == "zeros":
            yield name, torch.zeros(shape)
        elif rule == "ones":
            yield name, torch.ones(shape)
        elif rule == "normal_0.02":
            yield name, (rng.normal(key, tuple(shape), std=0.02) if method == "rng"
                         else torch.empty(shape).normal_(0.0, 0.02, generator=gen))
        else:
            bound = 1.0 / math.sqrt(_fan_in(shape))
            yield name, (rng.uniform(key, tuple(shape), low=-bound, high=bound) if method == "rng"
                         else torch.empty(shape).uniform_(-bound, bound, generator=gen))


@torch.no_grad()
def materialize_(
    module: nn.Module, *, seed: int = 0, method: str = "auto", device=None, dtype=torch.float32
) -> nn.Module:
    """Allocate a meta-device ``module`` on ``device`` and fill every parameter (see module doc)."""
    resolve_method(method, 0)  # a bad name fails before anything is allocated
    buffers = [n for n, b in module.named_buffers() if b.is_meta]
    if buffers:
        raise NotImplementedError(
            f"materialize_: {type(module).__name__} has buffers {buffers[:5]} that a meta-device "
            "build cannot restore; build it under parameters_on_meta_device() instead"
        )
    kept = {n: b.detach().clone() for n, b in module.named_buffers()}  # real constants
    device = torch.device(device) if device is not None else torch.device("cpu")
    module.to_empty(device=device)
    for name, value in kept.items():
        module.get_buffer(name).copy_(value)
    params = dict(module.named_parameters())
    for name, value in init_values(((n, p.shape) for n, p in params.items()), seed=seed, method=method):
        params[name].copy_(value)
    if dtype != torch.float32:
        module.to(dtype=dtype)
    return module
