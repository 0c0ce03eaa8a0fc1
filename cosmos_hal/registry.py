"""Kernel registry: each implementation of an op registers itself once with its constraints;
each backend ranks the implementations it prefers in its own file; ONE function,
:func:`select`, chooses per op and per call.

In the manner of diffusers' ``attention_dispatch.py`` (``_AttentionBackendRegistry.register(
name, constraints=[...])``): a kernel is one function, a probe that says whether it can run in
this process (vendor package importable), and constraints ``check(*args) -> None | reason``
that say whether it accepts a given call (dtype, shapes, DTensor parameters, device).

:func:`select` takes the pin (``impl=`` or ``COSMOS_HAL_<OP>``), else the backend's rank table,
and returns the first kernel whose constraints accept the call, with the kernels it passed over
and why (a fallback). Each dispatched call records its selection, so the training log, ``info``
and the profile report the kernel that actually ran (:func:`ran`), not a guess made without the
call's arguments.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

# Modules whose import registers implementations (portable ones in the core, vendor ones in
# backends/) and each backend's rank table. Vendor imports inside them are lazy.
_PROVIDERS = (
    "cosmos_hal.attention",
    "cosmos_hal.ops",
    "cosmos_hal.backends.cpu",
    "cosmos_hal.backends.cuda",
    "cosmos_hal.backends.npu",
)

Constraint = Callable[..., "str | None"]


@dataclass
class Kernel:
    op: str
    name: str
    fn: Callable
    constraints: tuple[Constraint, ...] = ()
    probe: Callable[[], bool] = field(default=lambda: True)
    doc: str = ""

    @functools.cached_property
    def usable(self) -> bool:
        try:
            return bool(self.probe())
        except Exception:  # a probe that cannot even run means "not here"
            return False

    def check(self, *args) -> str | None:
        """None if this kernel accepts a call with ``args``, else the first constraint's reason."""
        for constraint in self.constraints:
            reason = constraint(*args)
            if reason is not None:
                return reason
        return None


@dataclass(frozen=True)
class Selection:
    """What :func:`select` chose for one call: the kernel, what decided the candidates, and the
    preferred kernels it passed over as (name, reason)."""

    kernel: Kernel
    why: str
    skipped: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """'npu_rms_norm' or 'torch_fused (fallback: npu_fused_adamw: FSDP2 ...)'."""
        if not self.skipped:
            return self.kernel.name
        return f"{self.kernel.name} (fallback: " + "; ".join(f"{n}: {r}" for n, r in self.skipped) + ")"


_KERNELS: dict[str, dict[str, Kernel]] = {}
_RANKS: dict[str, dict[str, tuple[str, ...]]] = {}  # backend -> op -> kernel names, preferred first
_RAN: dict[str, Selection] = {}  # op -> the selection of the last dispatched call
_PLAN: dict[str, tuple[tuple[Kernel, ...], str]] = {}  # op -> last eager candidates (for compile)


class KernelUnavailableError(RuntimeError):
    pass


def register(op: str, name: str, *, constraints: Sequence[Constraint] = (),
             probe: Callable[[], bool] | None = None):
    """Decorator: register ``fn`` as implementation ``name`` of ``op``, once.

    ``constraints`` are ``check(*args) -> None | reason`` on the op's call arguments; a kernel
    whose constraint gives a reason is passed over for that call (a pinned one raises with it).
    No backend picks it automatically until a backend's :func:`rank` table lists it.
    """

    def wrap(fn: Callable) -> Callable:
        _KERNELS.setdefault(op, {})[name] = Kernel(
            op=op, name=name, fn=fn, constraints=tuple(constraints),
            probe=probe or (lambda: True), doc=(fn.__doc__ or "").strip().split("\n")[0],
        )
        return fn

    return wrap


def rank(backend: str, table: dict[str, Sequence[str]]) -> None:
    """``backend``'s preference: op -> implementation names, most preferred first. Called by
    each backend's own file (backends/<name>.py), the one place that knows its hardware."""
    for op, names in table.items():
        _RANKS.setdefault(backend, {})[op] = tuple(names)


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
    """Implementations of ``op`` that ``backend`` ranks and whose probe passes, preferred first."""
    _load_providers()
    names = _RANKS.get(backend, {}).get(op, ())
    return [n for n in names if n in _KERNELS.get(op, {}) and _KERNELS[op][n].usable]


def env_var(op: str) -> str:
    return f"COSMOS_HAL_{op.upper()}"


def _backend_name() -> str:
    from cosmos_hal.backend import current

    return current().name


def _candidates(op: str, impl: str | None, backend: str | None) -> tuple[tuple[Kernel, ...], str]:
    """(kernels to try in order, what decided them): ``impl``, else the pin, else the ranks."""
    if impl is None and backend is None and torch.compiler.is_compiling() and op in _PLAN:
        return _PLAN[op]  # no environment reads inside a compiled graph
    pinned = impl or os.environ.get(env_var(op), "").strip()
    if pinned:
        kernel = get(op, pinned)
        source = f"impl={pinned!r}" if impl else f"pinned by {env_var(op)}={pinned}"
        if not kernel.usable:
            where = backend or _backend_name()
            raise KernelUnavailableError(
                f"{source}: {op} kernel {pinned!r} cannot run here; available on {where}: "
                f"{', '.join(available(op, where)) or 'none'}")
        plan = ((kernel,), source)
    else:
        where = backend or _backend_name()
        plan = (tuple(get(op, n) for n in available(op, where)), f"backend {where}")
    if impl is None and backend is None:
        _PLAN[op] = plan
    return plan


def select(op: str, args: tuple | None = None, *, impl: str | None = None,
           backend: str | None = None) -> Selection:
    """The one chooser: the kernel of ``op`` that runs a call with ``args`` on ``backend``
    (default: the current one). ``args=None`` answers for no particular call (constraints
    unchecked: the preferred kernel). A call's selection is recorded for :func:`ran`."""
    kernels, why = _candidates(op, impl, backend)
    skipped = []
    for kernel in kernels:
        reason = kernel.check(*args) if args is not None else None
        if reason is None:
            selection = Selection(kernel, why, tuple(skipped))
            if args is not None and not torch.compiler.is_compiling():
                _RAN[op] = selection
            return selection
        skipped.append((kernel.name, reason))
    raise KernelUnavailableError(
        f"no {op} kernel ({why}) accepts this call: "
        + ("; ".join(f"{n}: {r}" for n, r in skipped) or "none registered"))


def ran() -> dict[str, Selection]:
    """op -> the selection of the last call dispatched in this process (what actually ran)."""
    return dict(_RAN)


def choose(op: str, backend: str) -> tuple[Kernel, str]:
    """(preferred kernel, why) of ``op`` on ``backend`` for no particular call; :func:`select`."""
    selection = select(op, backend=backend)
    return selection.kernel, selection.why


def clear_cache() -> None:
    """Re-run probes (tests that install or remove a fake vendor package); forget past choices."""
    for impls in _KERNELS.values():
        for k in impls.values():
            k.__dict__.pop("usable", None)
    _RAN.clear()
    _PLAN.clear()
