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


@torch.no_grad()
def materialize_(
    module: nn.Module, *, seed: int = 0, method: str = "auto", device=None, dtype=torch.float32
) -> nn.Module:
    """Allocate a meta-device ``module`` on ``device`` and fill every parameter (see module doc)."""
    if method not in ("auto", "rng", "torch"):
        raise ValueError(f"init method must be 'auto', 'rng' or 'torch', got {method!r}")
    buffers = [n for n, b in module.named_buffers() if b.is_meta]
    if buffers:
        raise NotImplementedError(
            f"materialize_: {type(module).__name__} has buffers {buffers[:5]} that a meta-device "
            "build cannot restore; build it under parameters_on_meta_device() instead"
        )
    kept = {n: b.detach().clone() for n, b in module.named_buffers()}  # real constants
    n_params = sum(p.numel() for p in module.parameters())
    if method == "auto":
        method = "rng" if n_params <= RNG_INIT_MAX_PARAMS else "torch"
    device = torch.device(device) if device is not None else torch.device("cpu")
    module.to_empty(device=device)
    for name, value in kept.items():
        module.get_buffer(name).copy_(value)
    gen = torch.Generator(device="cpu").manual_seed(seed) if method == "torch" else None
    for name, p in module.named_parameters():
        rule = _param_rule(name, p.shape)
        if rule == "zeros":
            p.zero_()
        elif rule == "ones":
            p.fill_(1.0)
        elif rule == "normal_0.02":
            if method == "rng":
                p.copy_(rng.normal(rng.Key(seed, "init", index=zlib.crc32(name.encode())), tuple(p.shape), std=0.02))
            else:
                p.copy_(torch.empty(p.shape).normal_(0.0, 0.02, generator=gen))
        else:
            bound = 1.0 / math.sqrt(_fan_in(p.shape))
            if method == "rng":
                key = rng.Key(seed, "init", index=zlib.crc32(name.encode()))
                values = rng.uniform(key, tuple(p.shape), low=-bound, high=bound)
            else:
                values = torch.empty(p.shape).uniform_(-bound, bound, generator=gen)
            p.copy_(values)
    if dtype != torch.float32:
        module.to(dtype=dtype)
    return module
