"""Process-group set-up from torchrun's environment, world info, and small collectives.

``world()`` is the one place that answers "which rank, how many, which device". The
collective comes from the backend (nccl, hccl or gloo); nothing here names a vendor.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

import cosmos_hal.backend as _backend
from cosmos_hal import liveness

# torchrun sets all of these; a launcher that sets some but not others is a mistake.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedEnvError(RuntimeError):
    pass


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    device: torch.device = torch.device("cpu")
    dist_backend: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or tdist.is_initialized()


_world: World | None = None


def env_world() -> dict[str, int] | None:
    """Rank info from the environment; None when not launched by torchrun.

    A half-set environment (RANK without WORLD_SIZE, ...) raises, naming what is missing.
    """
    present = {v: os.environ[v] for v in TORCHRUN_VARS if v in os.environ}
    if not present:
        return None
    missing = [v for v in TORCHRUN_VARS if v not in present]
    if missing:
        raise DistributedEnvError(
            f"the distributed environment is half set: {', '.join(sorted(present))} "
            f"set but {', '.join(missing)} missing. Launch with torchrun (or train.sh), "
            f"or unset {', '.join(sorted(present))} for a single-process run."
        )
    try:
        info = {v.lower(): int(present[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    except ValueError as exc:
        raise DistributedEnvError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {exc}") from None
    if not 0 <= info["rank"] < info["world_size"]:
        raise DistributedEnvError(f"RANK={info['rank']} is outside WORLD_SIZE={info['world_size']}")
    info["local_world_size"] = int(os.environ.get("LOCAL_WORLD_SIZE", info["world_size"]))
    info["node_rank"] = int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", 0)))
    return info


DEFAULT_TIMEOUT_S = 1800.0  # torch's gloo default; HCCL's own exec timeout is 1836 s
_heartbeat: liveness.Heartbeat | None = None


class RankFailedError(RuntimeError):
    """A collective failed because other ranks stopped answering; the message names them."""


def init(timeout_s: float | None = None, backend=None) -> World:
    """Initialise the process group if torchrun launched us; bind the device to LOCAL_RANK.

    Safe to call twice. ``timeout_s`` (the experiment's ``dist_timeout``) defaults to
    ``COSMOS_HAL_DIST_TIMEOUT`` or 1800 s: how long any collective may wait for the other
    ranks before this rank gives up (HCCL's first connection across nodes can take minutes).
    A rank launched by torchrun dies with it (:func:`liveness.tie_to_launcher`), and with
    more than one rank a heartbeat lets :func:`explain_failure` name a rank that went away.
    """
    global _world, _heartbeat
    if _world is not None:
        return _world
    be = backend or _backend.current()
    info = env_world()
    if info is None:
        _world = World(device=be.device(0), dist_backend="none")
        return _world
    if liveness.launched_by_torchrun():
        liveness.tie_to_launcher()
    be.set_device(info["local_rank"])
    timeout = float(timeout_s or os.environ.get("COSMOS_HAL_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    if not tdist.is_initialized():
        kwargs = {}
        if be.is_accelerator():  # binds the rank to its device; host ranks share the CPU
            kwargs["device_id"] = be.device(info["local_rank"])
        tdist.init_process_group(
            backend=be.dist_backend,
            timeout=datetime.timedelta(seconds=timeout),
            rank=info["rank"], world_size=info["world_size"], **kwargs,
        )
    _world = World(device=be.device(info["local_rank"]), dist_backend=be.dist_backend, **info)
    if info["world_size"] > 1 and _heartbeat is None:
        _heartbeat = liveness.Heartbeat(info["rank"], info["world_size"], liveness.heartbeat_interval(timeout))
    return _world


def explain_failure(exc: BaseException) -> RankFailedError | None:
    """After ``exc`` ended this rank's training: if other ranks stopped answering (died, froze,
    lost their network), an error that names them; None when everyone is still there.

    Takes a few heartbeats (3 x dist_timeout/10, at most 15 s) to tell silent ranks from slow ones.
    """
    if _heartbeat is None or not isinstance(exc, RuntimeError):
        return None
    me = _heartbeat.rank
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    try:
        silent = _heartbeat.silent_ranks()
    except Exception as store_exc:
        return RankFailedError(
            f"rank {me}: a collective failed ({first}) and the rendezvous store at "
            f"{_heartbeat.host}:{_heartbeat.port} no longer answers ({type(store_exc).__name__}): what "
            f"held it is gone (torchrun on node 0; without torchrun, rank 0); rank {me} stops too")
    if not silent:
        return None
    names = "; ".join(f"rank {r} ({who})" for r, who in sorted(silent.items()))
    return RankFailedError(
        f"{names} stopped answering (its heartbeat stood still for {3 * _heartbeat.interval:.0f} s): it died, "
        f"froze or lost its network; rank {me} stops too. The collective's error was: {first}")


def world() -> World:
    """The current world; a single-process world if :func:`init` was not called."""
    return _world if _world is not None else init()


def barrier() -> None:
    """Wait for every rank; a no-op for one process (no collective needs to start for it)."""
    if tdist.is_initialized() and tdist.get_world_size() > 1:
        tdist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce; ``op`` is sum, mean, max or min. A no-op on one process."""
    if not tdist.is_initialized() or tdist.get_world_size() == 1:
        return tensor
    ops = {"sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX, "min": tdist.ReduceOp.MIN,
           "mean": tdist.ReduceOp.SUM}
    if op not in ops:
        raise ValueError(f"all_reduce: op must be one of {sorted(ops)}, got {op!r}")
    tdist.all_reduce(tensor, op=ops[op])
    if op == "mean":
        tensor.div_(tdist.get_world_size())
    return tensor


def all_reduce_scalar(value: float, op: str = "mean") -> float:
    """Reduce one Python number across ranks (for logging; syncs the host)."""
    w = world()
    t = torch.tensor([float(value)], dtype=torch.float32, device=w.device)  # HCCL lacks fp64 reductions
    return float(all_reduce(t, op).item())


def shutdown() -> None:
    """Destroy the process group (after a barrier, so no rank leaves early)."""
    global _world, _heartbeat
    if tdist.is_initialized():
        try:
            barrier()
        finally:
            tdist.destroy_process_group()
    if _heartbeat is not None:
        _heartbeat.stop()
    _world = _heartbeat = None
