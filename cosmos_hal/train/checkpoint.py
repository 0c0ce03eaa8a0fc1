"""Checkpoints: atomic, keep-last-N, everything a bit-exact resume needs.

Layout (``<output_dir>/checkpoints/``)::

    iter_000000500/model.pt        {"net": weights, "ema": EMA shadows + buffers}   (rank 0)
    iter_000000500/optim.pt        {"optimizer": ..., "scheduler": ...}           (rank 0)
    iter_000000500/trainer.pt      {"iteration", "world_size", "experiment", "format", "files"}
    iter_000000500/rank_00003.pt   {"rng": rng.capture_state(), "loader": loader.state_dict()}
    latest_checkpoint.txt          "iter_000000500"

Atomic: every file goes into ``iter_....tmp`` first; rank 0 renames the folder once all
ranks have written, then rewrites latest_checkpoint.txt through a temporary name. trainer.pt
is written last and lists every file with its size, so a folder is complete by its content
(``incomplete``), whatever its name. keep_last renames an old folder to ``.trash-<name>-<pid>``
before deleting it, so a kill mid-delete leaves a trash folder, never an ``iter_`` folder
without its model.pt. ``clean`` (rank 0, at start) removes trash, stale ``.tmp`` folders and
``.latest_checkpoint.*.tmp`` files, and moves incomplete ``iter_`` folders out of the way;
``latest`` and ``iteration_dirs`` skip incomplete folders.

Two formats (``checkpoint.format``): full, the files above, portable (inference, ``model_path=``
and any world size read them); sharded, torch.distributed.checkpoint (sharded_checkpoint.py),
nothing gathered. ``restore`` tells them apart by content; checkpoint_convert.py converts.

Full under FSDP2: saving gathers weights, EMA and optimizer state tensor by tensor to rank 0's
host (``full_state_dict=True, cpu_offload=True``); rank 0 holds at most weights + EMA, then the
two moments (8 bytes per trained parameter each). Resuming, only rank 0 memory-maps the files
and broadcasts each tensor; every rank keeps its shard (``broadcast_from_rank0=True``), so no
device holds more than its shards plus one full tensor. The optimizer state is keyed by
parameter name in both formats. With LoRA/DoRA only the trainable (adapter) weights are stored;
the frozen base comes from ``model_path`` or the seeded init again.
"""

from __future__ import annotations

import os
import re
import shutil

import torch
import torch.distributed as tdist
from torch import nn

from cosmos_hal import dist, rng
from cosmos_hal.fileio import write_text_atomic
from cosmos_hal.train import sharded_checkpoint as sharded
from cosmos_hal.train.optim import init_optimizer_state

LATEST = "latest_checkpoint.txt"
_ITER_DIR = re.compile(r"^iter_(\d{9})$")


def _is_dtensor(t) -> bool:
    return hasattr(t, "full_tensor") and hasattr(t, "device_mesh")


def is_sharded(model: nn.Module) -> bool:
    return any(_is_dtensor(p) for p in model.parameters())


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def _from_rank0(obj):
    """``obj`` as rank 0 has it, on every rank (small python objects only)."""
    if not (tdist.is_initialized() and tdist.get_world_size() > 1):
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def _agree(problem: str | None, error=KeyError) -> None:
    """Raise ``problem`` (found on rank 0) on every rank, so no rank is left waiting in the
    next collective while rank 0 stops."""
    problem = _from_rank0(problem)
    if problem:
        raise error(problem)


def model_state(model: nn.Module, trainable_only: bool) -> dict:
    """Full weights as CPU tensors on rank 0, ``{}`` on the others (a collective under FSDP2:
    call on every rank). Gathered one tensor at a time straight to rank 0's host
    (``cpu_offload=True``); LoRA/DoRA gathers only the adapters (``ignore_frozen_params``)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_options(cpu_offload=True, ignore_frozen_params=trainable_only))
    if not dist.world().is_main:
        return {}
    keep = {n for n, p in model.named_parameters() if p.requires_grad} if trainable_only else None
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if keep is None or k in keep}


def _fit_problem(model: nn.Module, sd: dict, trainable_only: bool) -> str | None:
    """What keeps checkpoint weights ``sd`` from fitting ``model`` (missing trainable,
    unexpected or mis-shaped keys), or None."""
    live = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(k for k in live if k not in sd and (k in trainable or not trainable_only))
    unexpected = sorted(k for k in sd if k not in live)
    shapes = sorted(f"{k} {tuple(sd[k].shape)} vs {live[k]}" for k in sd if k in live and tuple(sd[k].shape) != live[k])
    if missing or unexpected or shapes:
        return (f"checkpoint weights do not fit the model: missing {missing[:10]}, unexpected {unexpected[:10]}, "
                f"shapes {shapes[:10]}")
    return None


def load_model_state(model: nn.Module, sd: dict | None, trainable_only: bool) -> None:
    """Load full weights ``sd``. Under FSDP2 only rank 0 holds ``sd`` (others pass None): it is
    broadcast one tensor at a time and each rank keeps its shard (``broadcast_from_rank0``)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        _agree(_fit_problem(model, sd, trainable_only) if dist.world().is_main else None)
        set_model_state_dict(model, sd if dist.world().is_main else {},
                             options=_options(strict=not trainable_only, broadcast_from_rank0=True))
        return
    problem = _fit_problem(model, sd, trainable_only)
    if problem:
        raise KeyError(problem)
    model.load_state_dict(sd, strict=not trainable_only)


def optimizer_state(model: nn.Module, optimizer) -> dict:
    """The optimizer's state keyed by parameter name, full and on rank 0's host (``{}`` on
    the others; a collective under FSDP2). Named keys are what the sharded format stores too,
    so the two convert into each other without the model."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer, state: dict | None) -> None:
    """Load a full optimizer state (rank 0's ``state`` broadcast under FSDP2, others pass None).
    Integer-keyed states (checkpoints from before named keys) load as torch wrote them."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    init_optimizer_state(optimizer)
    if is_sharded(model):
        set_optimizer_state_dict(model, optimizer, optim_state_dict=state if dist.world().is_main else {},
                                 options=_options(broadcast_from_rank0=True))
    elif all(isinstance(k, int) for k in state.get("state", {})) and state.get("state"):
        optimizer.load_state_dict(state)
    else:
        set_optimizer_state_dict(model, optimizer, optim_state_dict=state)


def ema_state(ema) -> dict | None:
    """EMA shadows as full CPU tensors on rank 0, None on the others (gathers DTensor shards
    one at a time: call on every rank)."""
    if ema is None:
        return None
    main = dist.world().is_main
    state = ema.state_dict()
    shadow = {}
    for k, v in state["shadow"].items():
        # (shards offloaded to the host are gathered on the mesh's device, as torch's _gather_state_dict does)
        full = v.to(v.device_mesh.device_type).full_tensor() if _is_dtensor(v) else v
        if main:
            shadow[k] = full.detach().to("cpu", copy=True)
        del full
    if not main:
        return None
    state["shadow"] = shadow
    state["buffers"] = {k: v.detach().to("cpu", copy=True) for k, v in state["buffers"].items()}
    return state


def load_ema_state(ema, state: dict | None, from_rank0: bool = False) -> None:
    """Load full EMA state. ``from_rank0`` (FSDP2): only rank 0 holds ``state``; each shadow
    is scattered from it one tensor at a time (``distribute_tensor(src_data_rank=0)``), so
    no rank holds more than one full tensor beyond its shards."""
    from torch.distributed.tensor import distribute_tensor

    if not from_rank0:
        ema.load_state_dict(state)
        return
    main = dist.world().is_main
    head = _from_rank0({k: v for k, v in state.items() if k != "shadow"} if main else None)
    if main:
        shapes = {k: tuple(v.shape) for k, v in state["shadow"].items()}
        live = {k: tuple(v.shape) for k, v in ema.shadow.items()}
        problem = None if shapes == live else (
            f"EMA state does not fit the model: missing {sorted(set(live) - set(shapes))[:10]}, unexpected "
            f"{sorted(set(shapes) - set(live))[:10]}, shapes "
            f"{sorted(f'{k} {shapes[k]} vs {live[k]}' for k in shapes if k in live and shapes[k] != live[k])[:10]}")
    _agree(problem if main else None)
    device = dist.world().device
    with torch.no_grad():
        for name, live in ema.shadow.items():
            src = state["shadow"][name].to(device) if main else torch.empty(live.shape, dtype=live.dtype, device=device)
            if _is_dtensor(live):
                live.to_local().copy_(distribute_tensor(src, live.device_mesh, live.placements, src_data_rank=0).to_local())
            else:
                tdist.broadcast(src, src=0)
                live.copy_(src)
            del src
    ema.load_state_dict({**head, "shadow": dict(ema.shadow)})  # gamma, shift, buffers; shadows are in place


def ema_weights(checkpoint_dir: str) -> dict[str, torch.Tensor]:
    """The EMA weights of a checkpoint folder as a state dict, for inference
    (``build_transformer(preset, weights=ema_weights(dir))`` for a full fine-tune)."""
    why = incomplete(checkpoint_dir)
    if why:
        newest = latest(os.path.dirname(os.path.abspath(checkpoint_dir)))
        raise FileNotFoundError(f"{checkpoint_dir} is not a complete checkpoint ({why}); "
                                + (f"the newest complete one is {newest}" if newest else "no complete one is beside it"))
    if sharded.is_sharded_folder(checkpoint_dir):  # a sharded one: read only its EMA entries
        ema = sharded.read(checkpoint_dir, only=("ema",)).get("ema")
        where = f"{checkpoint_dir} (sharded)"
    else:
        ema = load_mapped(os.path.join(checkpoint_dir, "model.pt")).get("ema")
        where = f"{checkpoint_dir}/model.pt"
    if not ema:
        raise KeyError(f"{where} holds no EMA weights (the run had ema.enabled=false)")
    weights = {**ema["shadow"], **ema.get("buffers", {})}
    # Predict1's uncertainty head (train/loss.py LogVarHead) is part of training only, not of the DiT
    return {k: v for k, v in weights.items() if not k.startswith("logvar.")}


# -- folders --------------------------------------------------------------------------------


_RANK_FILE = "rank_{:05d}.pt"
TRASH_PREFIX = ".trash-"


def incomplete(folder: str) -> str | None:
    """Why checkpoint ``folder`` cannot be resumed from (a file missing or cut short), or None.

    Judged by content: trainer.pt lists every file and its size; folders from before that
    list must hold model.pt, optim.pt and one rank file per process. A sharded folder's
    ``.metadata`` must also read and every shard file it indexes be there in full."""
    if sharded.is_sharded_folder(folder):
        why = sharded.incomplete(folder)
        if why:
            return why
    try:
        meta = torch.load(os.path.join(folder, "trainer.pt"), map_location="cpu", weights_only=False)
        files = meta.get("files") or {n: None for n in ("model.pt", "optim.pt", *(
            _RANK_FILE.format(r) for r in range(int(meta["world_size"]))))}
    except Exception as err:  # missing, truncated or foreign trainer.pt
        return f"trainer.pt unreadable ({type(err).__name__}: {err})"
    for name, size in files.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} missing"
        if size is not None and os.path.getsize(path) != size:
            return f"{name} has {os.path.getsize(path)} bytes, trainer.pt says {size}"
    return None


def iteration_dirs(root: str, complete: bool = True) -> list[str]:
    """``iter_NNNNNNNNN`` folder names under ``root``, oldest first; only the complete ones
    unless ``complete=False``."""
    if not os.path.isdir(root):
        return []
    names = sorted(d for d in os.listdir(root) if _ITER_DIR.match(d) and os.path.isdir(os.path.join(root, d)))
    return [d for d in names if not incomplete(os.path.join(root, d))] if complete else names


def latest(root: str) -> str | None:
    """The newest complete checkpoint folder under ``root``, or None. latest_checkpoint.txt
    wins when the folder it names is complete; else the newest complete folder."""
    marker = os.path.join(root, LATEST)
    if os.path.isfile(marker):
        name = open(marker, encoding="utf-8").read().strip()
        if _ITER_DIR.match(name) and os.path.isdir(os.path.join(root, name)) and not incomplete(os.path.join(root, name)):
            return os.path.join(root, name)
    dirs = iteration_dirs(root)
    return os.path.join(root, dirs[-1]) if dirs else None


def _discard(root: str, name: str) -> None:
    """Rename ``root/name`` out of the way, then delete it: a kill part-way leaves a
    ``.trash-`` folder that ``clean`` removes, never a half folder under a normal name."""
    trash = os.path.join(root, f"{TRASH_PREFIX}{name}-{os.getpid()}")
    os.rename(os.path.join(root, name), trash)
    shutil.rmtree(trash, ignore_errors=True)


def clean(root: str) -> list[str]:
    """Remove what an interrupted save or rotation left under ``root`` (call on rank 0 only,
    before resuming): ``.trash-*`` and ``iter_*.tmp`` folders, ``.latest_checkpoint.*.tmp*``
    files, and incomplete ``iter_`` folders. Returns the names removed."""
    if not os.path.isdir(root):
        return []
    removed = []
    stem = "." + os.path.splitext(LATEST)[0] + "."
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith(stem) and ".tmp" in name and os.path.isfile(path):
            os.remove(path)
        elif name.startswith(TRASH_PREFIX) or (name.endswith(".tmp") and _ITER_DIR.match(name[:-4])):
            shutil.rmtree(path, ignore_errors=True)
        elif _ITER_DIR.match(name) and os.path.isdir(path) and incomplete(path):
            _discard(root, name)
        else:
            continue
        removed.append(name)
    return removed


FORMATS = ("full", "sharded")


def save(root: str, iteration: int, *, model, optimizer, scheduler, ema, loader, experiment: dict,
         trainable_only: bool, keep_last: int, extra_writer=None, format: str = "full") -> str:
    """Write checkpoint ``iteration`` (collective: every rank calls it). Returns the folder.

    ``format``: full (portable torch files gathered on rank 0's host) or sharded (DCP: each
    rank writes its shards; sharded_checkpoint.py). ``extra_writer(tmp_dir, weights)`` runs
    on rank 0 with the gathered trainable weights before the rename, so extra files (LoRA
    adapters) are part of the same atomic checkpoint."""
    if format not in FORMATS:
        raise ValueError(f"checkpoint.format={format!r}: choose full (portable files) or sharded "
                         "(torch.distributed.checkpoint)")
    w = dist.world()
    name = f"iter_{iteration:09d}"
    final = os.path.join(root, name)
    tmp = final + ".tmp"
    if w.is_main:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    mine = {"rng": rng.capture_state(), "loader": loader.state_dict(), "rank": w.rank}
    if format == "sharded":
        sharded.save(tmp, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema, rank_state=mine,
                     trainable_only=trainable_only)
        if extra_writer is not None:  # adapters only (trainable_only): small to gather
            net = model_state(model, trainable_only=True)
            if w.is_main:
                extra_writer(tmp, net)
            del net
    else:
        _save_full(tmp, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema, rank_state=mine,
                   trainable_only=trainable_only, extra_writer=extra_writer)
    dist.barrier()
    if w.is_main:
        # written last, once every rank's file is there: the list that makes the folder complete
        files = {f: os.path.getsize(os.path.join(tmp, f)) for f in sorted(os.listdir(tmp))}
        write_trainer(tmp, {"iteration": iteration, "world_size": w.world_size, "experiment": experiment,
                            "format": format, "trainable_only": bool(trainable_only), "files": files})
        if os.path.isdir(final):
            _discard(root, name)
        os.replace(tmp, final)
        write_text_atomic(os.path.join(root, LATEST), name + "\n")
        old = iteration_dirs(root, complete=False)[:-keep_last] if keep_last > 0 else []
        for stale in old:
            if stale != name:  # never the folder just written (a newer one may be from an earlier run)
                _discard(root, stale)
    dist.barrier()
    return final


def _save_full(tmp: str, *, model, optimizer, scheduler, ema, rank_state: dict, trainable_only: bool,
               extra_writer) -> None:
    """model.pt, optim.pt and this rank's file. Rank 0's host holds at most the weights and the
    EMA at once (8 bytes per trained parameter), then the two AdamW moments (another 8)."""
    w = dist.world()
    torch.save(rank_state, os.path.join(tmp, _RANK_FILE.format(w.rank)))
    net = model_state(model, trainable_only)
    ema_sd = ema_state(ema)
    if w.is_main:
        torch.save({"net": net, "ema": ema_sd, "trainable_only": trainable_only}, os.path.join(tmp, "model.pt"))
        if extra_writer is not None:
            extra_writer(tmp, net)
    del net, ema_sd
    optim = optimizer_state(model, optimizer)
    if w.is_main:
        torch.save({"optimizer": optim, "scheduler": scheduler.state_dict()}, os.path.join(tmp, "optim.pt"))
    del optim


def write_trainer(folder: str, meta: dict) -> None:
    torch.save(meta, os.path.join(folder, "trainer.pt"))


def read_trainer(folder: str) -> dict:
    return torch.load(os.path.join(folder, "trainer.pt"), map_location="cpu", weights_only=False)


def load_mapped(path: str) -> dict:
    """A checkpoint file memory-mapped: its tensors are read from the page cache as they are
    copied, never as one more whole copy in this process's memory."""
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def restore(path: str, *, model, optimizer, scheduler, ema, loader) -> int:
    """Load checkpoint folder ``path`` (full or sharded, told by its content) into the live
    objects; returns its iteration.

    Full under FSDP2: only rank 0 maps the files; every tensor is broadcast from it one at a
    time and each rank keeps its shard (weights, EMA, optimizer), so no rank's device holds
    more than one full tensor beyond its shards. Sharded: each rank reads its own slices."""
    w = dist.world()
    trainer = read_trainer(path)
    if trainer["world_size"] != w.world_size:
        raise RuntimeError(f"{path} was written by {trainer['world_size']} processes, this run has {w.world_size}: "
                           "resume with the same world size (the data order and RNG states are per rank), or "
                           f"start a new output_dir with model_path={path}/model.pt (a full checkpoint's weights; "
                           "convert a sharded one with tools/convert_checkpoint.py --to full)")
    if sharded.is_sharded_folder(path):
        mine = sharded.restore(path, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema,
                               trainable_only=bool(trainer["trainable_only"]))
    else:
        mine = _restore_full(path, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema)
    loader.load_state_dict(mine["loader"])
    rng.restore_state(mine["rng"])
    return int(trainer["iteration"])


def _restore_full(path: str, *, model, optimizer, scheduler, ema) -> dict:
    w = dist.world()
    from_rank0 = is_sharded(model)  # FSDP2: the other ranks never read model.pt / optim.pt
    reads = w.is_main or not from_rank0
    state = load_mapped(os.path.join(path, "model.pt")) if reads else None
    trainable_only = _from_rank0(state["trainable_only"] if w.is_main else None) if from_rank0 else \
        state["trainable_only"]
    load_model_state(model, state["net"] if reads else None, trainable_only)
    if ema is not None:
        _agree(f"{path}/model.pt holds no EMA weights but this run has ema.enabled=true"
               if reads and not state.get("ema") else None)
        load_ema_state(ema, state["ema"] if reads else None, from_rank0=from_rank0)
    del state
    opt = load_mapped(os.path.join(path, "optim.pt")) if reads else None
    load_optimizer_state(model, optimizer, opt["optimizer"] if reads else None)
    sched = opt["scheduler"] if reads else None
    del opt
    scheduler.load_state_dict(_from_rank0(sched) if from_rank0 else sched)
    return torch.load(os.path.join(path, _RANK_FILE.format(w.rank)), map_location="cpu", weights_only=False)
