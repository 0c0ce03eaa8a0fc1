"""Checkpoints: atomic, keep-last-N, everything a bit-exact resume needs.

Layout (``<output_dir>/checkpoints/``)::

    iter_000000500/model.pt        {"net": weights, "ema": EMA shadows + buffers}   (rank 0)
    iter_000000500/optim.pt        {"optimizer": ..., "scheduler": ...}           (rank 0)
    iter_000000500/trainer.pt      {"iteration", "world_size", "experiment"}       (rank 0)
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

FSDP2: weights and optimizer state are gathered into full (unsharded) state dicts with
torch.distributed.checkpoint.state_dict (``full_state_dict=True, cpu_offload=True``), so a
checkpoint is one ordinary torch file that loads at any world size and into inference. On
resume every rank reads the files (the output directory must be on a shared file system
for multi-node runs) and keeps its shard. With LoRA/DoRA only the trainable (adapter)
weights are stored; the frozen base comes from ``model_path`` or the seeded init again.
"""

from __future__ import annotations

import os
import re
import shutil

import torch
from torch import nn

from cosmos_hal import dist, rng
from cosmos_hal.fileio import write_text_atomic

LATEST = "latest_checkpoint.txt"
_ITER_DIR = re.compile(r"^iter_(\d{9})$")


def _is_dtensor(t) -> bool:
    return hasattr(t, "full_tensor") and hasattr(t, "device_mesh")


def is_sharded(model: nn.Module) -> bool:
    return any(_is_dtensor(p) for p in model.parameters())


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def model_state(model: nn.Module, trainable_only: bool) -> dict:
    """Full weights on rank 0 (a collective under FSDP: call on every rank)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        sd = get_model_state_dict(model, options=_options(cpu_offload=True))
    else:
        sd = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    if trainable_only:
        keep = {n for n, p in model.named_parameters() if p.requires_grad}
        sd = {k: v for k, v in sd.items() if k in keep}
    return sd


def load_model_state(model: nn.Module, sd: dict, trainable_only: bool) -> None:
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        result = set_model_state_dict(model, sd, options=_options(strict=not trainable_only))
    else:
        result = model.load_state_dict(sd, strict=not trainable_only)
    missing = [k for k in getattr(result, "missing_keys", [])
               if k in {n for n, p in model.named_parameters() if p.requires_grad}]
    if missing or getattr(result, "unexpected_keys", []):
        raise KeyError(f"checkpoint weights do not fit the model: missing trainable {missing[:10]}, "
                       f"unexpected {list(result.unexpected_keys)[:10]}")


def optimizer_state(model: nn.Module, optimizer) -> dict:
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=_options())
    else:
        optimizer.load_state_dict(state)


def ema_state(ema) -> dict | None:
    """EMA shadows as full CPU tensors (gathers DTensor shards: call on every rank)."""
    if ema is None:
        return None
    state = ema.state_dict()
    state["shadow"] = {k: (v.full_tensor() if _is_dtensor(v) else v).detach().to("cpu", copy=True)
                       for k, v in state["shadow"].items()}
    state["buffers"] = {k: v.detach().to("cpu", copy=True) for k, v in state["buffers"].items()}
    return state


def load_ema_state(ema, state: dict) -> None:
    from torch.distributed.tensor import distribute_tensor

    shadow = {}
    for name, full in state["shadow"].items():
        live = ema.shadow.get(name)
        if live is not None and _is_dtensor(live):
            full = distribute_tensor(full.to(live.device_mesh.device_type), live.device_mesh, live.placements)
        shadow[name] = full
    ema.load_state_dict({**state, "shadow": shadow})


def ema_weights(checkpoint_dir: str) -> dict[str, torch.Tensor]:
    """The EMA weights of a checkpoint folder as a state dict, for inference
    (``build_transformer(preset, weights=ema_weights(dir))`` for a full fine-tune)."""
    why = incomplete(checkpoint_dir)
    if why:
        newest = latest(os.path.dirname(os.path.abspath(checkpoint_dir)))
        raise FileNotFoundError(f"{checkpoint_dir} is not a complete checkpoint ({why}); "
                                + (f"the newest complete one is {newest}" if newest else "no complete one is beside it"))
    state = torch.load(os.path.join(checkpoint_dir, "model.pt"), map_location="cpu", weights_only=False)
    if not state.get("ema"):
        raise KeyError(f"{checkpoint_dir}/model.pt holds no EMA weights (the run had ema.enabled=false)")
    return {**state["ema"]["shadow"], **state["ema"]["buffers"]}


# -- folders --------------------------------------------------------------------------------


_RANK_FILE = "rank_{:05d}.pt"
TRASH_PREFIX = ".trash-"


def incomplete(folder: str) -> str | None:
    """Why checkpoint ``folder`` cannot be resumed from (a file missing or cut short), or None.

    Judged by content: trainer.pt lists every file and its size; folders from before that
    list must hold model.pt, optim.pt and one rank file per process."""
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


def save(root: str, iteration: int, *, model, optimizer, scheduler, ema, loader, experiment: dict,
         trainable_only: bool, keep_last: int, extra_writer=None) -> str:
    """Write checkpoint ``iteration`` (collective: every rank calls it). Returns the folder.

    ``extra_writer(tmp_dir, weights)`` runs on rank 0 with the gathered weights before the
    rename, so extra files (LoRA adapters) are part of the same atomic checkpoint."""
    w = dist.world()
    name = f"iter_{iteration:09d}"
    final = os.path.join(root, name)
    tmp = final + ".tmp"
    if w.is_main:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    net = model_state(model, trainable_only)
    ema_sd = ema_state(ema)
    optim = optimizer_state(model, optimizer)
    torch.save({"rng": rng.capture_state(), "loader": loader.state_dict(), "rank": w.rank},
               os.path.join(tmp, _RANK_FILE.format(w.rank)))
    if w.is_main:
        torch.save({"net": net, "ema": ema_sd, "trainable_only": trainable_only}, os.path.join(tmp, "model.pt"))
        torch.save({"optimizer": optim, "scheduler": scheduler.state_dict()}, os.path.join(tmp, "optim.pt"))
        if extra_writer is not None:
            extra_writer(tmp, net)
    dist.barrier()
    if w.is_main:
        # written last, once every rank's file is there: the list that makes the folder complete
        files = {f: os.path.getsize(os.path.join(tmp, f)) for f in sorted(os.listdir(tmp))}
        torch.save({"iteration": iteration, "world_size": w.world_size, "experiment": experiment, "files": files},
                   os.path.join(tmp, "trainer.pt"))
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


def restore(path: str, *, model, optimizer, scheduler, ema, loader) -> int:
    """Load checkpoint folder ``path`` into the live objects; returns its iteration."""
    w = dist.world()
    trainer = torch.load(os.path.join(path, "trainer.pt"), map_location="cpu", weights_only=False)
    if trainer["world_size"] != w.world_size:
        raise RuntimeError(f"{path} was written by {trainer['world_size']} processes, this run has {w.world_size}: "
                           "resume with the same world size, or start a new output_dir")
    state = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=False)
    load_model_state(model, state["net"], state["trainable_only"])
    if ema is not None:
        if not state.get("ema"):
            raise KeyError(f"{path}/model.pt holds no EMA weights but this run has ema.enabled=true")
        load_ema_state(ema, state["ema"])
    opt = torch.load(os.path.join(path, "optim.pt"), map_location="cpu", weights_only=False)
    load_optimizer_state(model, optimizer, opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    mine = torch.load(os.path.join(path, f"rank_{w.rank:05d}.pt"), map_location="cpu", weights_only=False)
    loader.load_state_dict(mine["loader"])
    rng.restore_state(mine["rng"])
    return int(trainer["iteration"])
