"""Kernel registry: each implementation of an op registers itself with the backends it
serves and a probe that says whether it can run; front ends dispatch by name.

In the manner of diffusers' ``attention_dispatch.py``: one decorator per implementation,
one chooser. An op can be pinned with ``COSMOS_HAL_<OP>`` (``COSMOS_HAL_ATTENTION=math``).

Preference: each implementation gives a rank per backend (lower first). The first whose
probe passes is chosen unless the environment pins another.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass, field
from typing import Callable

# Modules whose import registers implementations. Vendor imports inside them are lazy.
_PROVIDERS = (
    "cosmos_hal.backends.cpu",
    "cosmos_hal.backends.cuda",
    "cosmos_hal.backends.npu",
)


@dataclass
class Kernel:
    op: str
    name: str
    fn: Callable
    ranks: dict[str, int]
    probe: Callable[[], bool] = field(default=lambda: True)
    doc: str = ""

    @functools.cached_property
    def usable(self) -> bool:
        try:
            return bool(self.probe())
        except Exception:  # a probe that cannot even run means "not here"
            return False


_KERNELS: dict[str, dict[str, Kernel]] = {}


class KernelUnavailableError(RuntimeError):
    pass


def register(op: str, name: str, *, ranks: dict[str, int], probe: Callable[[], bool] | None = None):
    """Decorator: register ``fn`` as implementation ``name`` of ``op``.

    ``ranks`` maps backend name -> preference (lower is preferred); a backend that is not
    listed never picks it automatically, but it can still be pinned where its probe passes.
    """

    def wrap(fn: Callable) -> Callable:
        _KERNELS.setdefault(op, {})[name] = Kernel(
            op=op, name=name, fn=fn, ranks=dict(ranks),
            probe=probe or (lambda: True), doc=(fn.__doc__ or "").strip().split("\n")[0],
        )
        return fn

    return wrap


@functools.lru_cache(maxsize=None)
def _load_providers() -> None:
    for mod in _PROVIDERS:
        importlib.import_module(mod)


def ops() -> list[str]:
    _load_providers()
    return sorted(_KERNELS)


def get(op: str, name: str) -> Kernel:
    _load_providers()
    try:
        return _KERNELS[op][name]
    except KeyError:
        known = ", ".join(sorted(_KERNELS.get(op, {}))) or "none"
        raise KernelUnavailableError(
            f"no implementation {name!r} of {op!r}; known implementations: {known}"
        ) from None


def available(op: str, backend: str) -> list[str]:
    """Implementations of ``op`` that ``backend`` may pick, most preferred first."""
    _load_providers()
    kernels = [k for k in _KERNELS.get(op, {}).values() if backend in k.ranks and k.usable]
    return [k.name for k in sorted(kernels, key=lambda k: k.ranks[backend])]


def env_var(op: str) -> str:
    return f"COSMOS_HAL_{op.upper()}"


def choose(op: str, backend: str) -> tuple[Kernel, str]:
    """The implementation of ``op`` to use on ``backend``, and why."""
    _load_providers()
    pinned = os.environ.get(env_var(op), "").strip()
    if pinned:
        kernel = get(op, pinned)
        if not kernel.usable:
            raise KernelUnavailableError(
                f"{env_var(op)}={pinned} pins an implementation that cannot run here; "
                f"available for {backend}: {', '.join(available(op, backend)) or 'none'}"
            )
        return kernel, f"pinned by {env_var(op)}"
    names = available(op, backend)
    if not names:
        raise KernelUnavailableError(f"no implementation of {op!r} is available on {backend}")
    return _KERNELS[op][names[0]], "first available in preference order"


def clear_cache() -> None:
    """Re-run probes (tests that install or remove a fake vendor package)."""
    for impls in _KERNELS.values():
        for k in impls.values():
            k.__dict__.pop("usable", None)
