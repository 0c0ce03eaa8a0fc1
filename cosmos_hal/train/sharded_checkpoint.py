"""Sharded checkpoints (``checkpoint.format=sharded``): torch.distributed.checkpoint (DCP).

Why: a full checkpoint gathers the weights, the EMA and the AdamW moments onto rank 0's host
(see checkpoint.py). With DCP every rank writes only its own shards and reads only the slices
it needs, so no process ever holds the whole training state, and a checkpoint written by N
ranks loads into M (DCP reshards DTensors from the chunk list in ``.metadata``).

Folder ``iter_NNNNNNNNN/``: DCP's files (``.metadata`` and one ``__<rank>_0.distcp`` per
writing rank) hold one state dict::

    model           trained weights (FSDP2: DTensor shards; LoRA/DoRA: the adapters only)
    optimizer       get_optimizer_state_dict: per-parameter state keyed by name, param_groups
    ema             PowerEMA.state_dict() (its shadows shard like their parameters), if enabled
    scheduler       bytes: torch.save of the LR scheduler's state
    trainable_only  bool
    rank_NNNNN      bytes: that rank's RNG states and data-loader position

plus ``trainer.pt`` (iteration, world size, experiment, file list), written last by rank 0 as
in the full format. Complete when ``.metadata`` reads and every file it lists is there and
long enough (``incomplete``). Per-rank and scheduler state are packed into bytes so DCP does
not flatten them (a python RNG state is a tuple of 625 ints).
"""

from __future__ import annotations

import io
import os
import warnings

import torch
import torch.distributed as tdist

from cosmos_hal.train.optim import init_optimizer_state

METADATA = ".metadata"
_RANK_KEY = "rank_{:05d}"


def is_sharded_folder(folder) -> bool:
    return os.path.isfile(os.path.join(folder, METADATA))


def pack(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def unpack(data: bytes):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def read_metadata(folder):
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(os.fspath(folder)).read_metadata()


def incomplete(folder) -> str | None:
    """Why DCP folder ``folder`` cannot be read (``.metadata`` unreadable, a shard file it lists
    missing or shorter than the bytes it indexes), or None."""
    try:
        meta = read_metadata(folder)
    except Exception as err:  # missing, truncated or foreign .metadata
        return f"{METADATA} unreadable ({type(err).__name__}: {err})"
    need: dict[str, int] = {}
    for info in (meta.storage_data or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(need.items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} missing"
        if os.path.getsize(path) < size:
            return f"{name} has {os.path.getsize(path)} bytes, {METADATA} indexes {size}"
    return None


def _no_dist() -> bool:
    return not (tdist.is_available() and tdist.is_initialized())


def _dcp(fn, state: dict, folder, no_dist: bool) -> None:
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        fn(state, checkpoint_id=os.fspath(folder), no_dist=no_dist)


def _model_sd(model, trainable_only: bool) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(ignore_frozen_params=trainable_only))


def _set_model(model, sd: dict, trainable_only: bool) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, sd, options=StateDictOptions(strict=not trainable_only))


def save(folder, *, model, optimizer, scheduler, ema, rank_state: dict, trainable_only: bool) -> None:
    """Write the sharded state into ``folder`` (collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    rank = tdist.get_rank() if not _no_dist() else 0
    init_optimizer_state(optimizer)
    state = {"model": _model_sd(model, trainable_only), "optimizer": get_optimizer_state_dict(model, optimizer),
             "scheduler": pack(scheduler.state_dict()), "trainable_only": bool(trainable_only),
             _RANK_KEY.format(rank): pack(rank_state)}
    if ema is not None:
        state["ema"] = ema.state_dict()
    import torch.distributed.checkpoint as dcp

    _dcp(dcp.save, state, folder, _no_dist())


def restore(folder, *, model, optimizer, scheduler, ema, trainable_only: bool) -> dict:
    """Load ``folder`` into the live objects, each rank reading its own slices; returns this
    rank's packed state (RNG, loader) unpacked."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    rank = tdist.get_rank() if not _no_dist() else 0
    keys = set(read_metadata(folder).state_dict_metadata)
    if ema is not None and not any(k.startswith("ema.") for k in keys):
        raise KeyError(f"{folder} holds no EMA weights but this run has ema.enabled=true")
    mine = _RANK_KEY.format(rank)
    if mine not in keys:
        raise KeyError(f"{folder} holds no state for rank {rank} ({mine}): it was written by fewer processes")
    init_optimizer_state(optimizer)
    state = {"model": _model_sd(model, trainable_only), "optimizer": get_optimizer_state_dict(model, optimizer),
             "scheduler": b"", mine: b""}
    if ema is not None:
        state["ema"] = ema.state_dict()
    _dcp(dcp.load, state, folder, _no_dist())
    _set_model(model, state["model"], trainable_only)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optimizer"])
    scheduler.load_state_dict(unpack(state["scheduler"]))
    if ema is not None:
        ema.load_state_dict(state["ema"])  # DCP loaded in place; this checks the keys
    return unpack(state[mine])


# -- host-only reading and writing (conversion, inference): one process, no process group --------


def read(folder, only: tuple[str, ...] | None = None) -> dict:
    """The state of a sharded folder as full CPU tensors in its nested layout, built from
    ``.metadata`` alone (no model needed); ``only`` limits it to those top-level keys (e.g.
    ``("ema",)``) so a reader holds no more than it asked for."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = read_metadata(folder)
    flat = {}
    for key, md in meta.state_dict_metadata.items():
        path = (meta.planner_data or {}).get(key, (key,))
        if only is not None and path[0] not in only:
            continue
        flat[key] = torch.empty(md.size, dtype=md.properties.dtype) if isinstance(md, TensorStorageMetadata) else None
    _dcp(dcp.load, flat, folder, no_dist=True)
    nested: dict = {}
    for key, value in flat.items():
        _set_path(nested, (meta.planner_data or {}).get(key, (key,)), value)
    return nested


def _set_path(root: dict, path: tuple, value) -> None:
    """Put ``value`` at ``path`` (str keys: dicts, int keys: lists), as DCP flattened it."""
    node = root
    for part, nxt in zip(path[:-1], path[1:]):
        empty = [] if isinstance(nxt, int) else {}
        if isinstance(node, list):
            while len(node) <= part:
                node.append(None)
            if node[part] is None:
                node[part] = empty
            node = node[part]
        else:
            node = node.setdefault(part, empty)
    if isinstance(node, list):
        while len(node) <= path[-1]:
            node.append(None)
    node[path[-1]] = value


def write(folder, state: dict) -> None:
    """Write ``state`` (full tensors, nested dicts) as a DCP checkpoint from one process."""
    import torch.distributed.checkpoint as dcp

    _dcp(dcp.save, state, folder, no_dist=True)


def rank_key(rank: int) -> str:
    return _RANK_KEY.format(rank)
