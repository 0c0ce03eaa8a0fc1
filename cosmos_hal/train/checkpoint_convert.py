"""Convert a training checkpoint folder between the full and the sharded format
(``tools/convert_checkpoint.py``).

Why our own and not only torch's ``format_utils.dcp_to_torch_save`` / ``torch_save_to_dcp``:
those write one file with everything in it, held in memory at once. Our full format is four
kinds of files (model.pt, optim.pt, trainer.pt, one rank file per process) that inference and
the tools read separately, and conversion here holds at most one of them in memory (weights
and EMA, then the optimizer state); full files are memory-mapped. No model is needed: the
sharded layout is read from DCP's ``.metadata``. A converted sharded checkpoint stores whole
tensors, which DCP reshards on load, so training resumes from it at the same world size as
from the original. The result is written to ``<out>.tmp-<pid>`` and renamed.
"""

from __future__ import annotations

import os
import shutil

import torch

from cosmos_hal.train import checkpoint as ckpt
from cosmos_hal.train import sharded_checkpoint as sharded

FULL_FILES = ("model.pt", "optim.pt")


class ConvertError(ValueError):
    """A checkpoint that cannot be converted; the message says what was found and what to give."""


def detect(folder: str) -> str:
    """``full`` or ``sharded``, by what ``folder`` holds; ConvertError naming what is there otherwise."""
    if not os.path.exists(folder):
        raise ConvertError(f"{folder}: no such folder; give a checkpoint folder such as "
                           "output/<experiment>/checkpoints/iter_000000500")
    if not os.path.isdir(folder):
        raise ConvertError(f"{folder} is a file; give the checkpoint folder that holds it ({os.path.dirname(folder) or '.'})")
    if sharded.is_sharded_folder(folder):
        return "sharded"
    names = sorted(os.listdir(folder))
    if all(n in names for n in FULL_FILES):
        return "full"
    newest = ckpt.latest(folder)
    hint = f"; this looks like a checkpoints folder: give one of its iter_ folders, e.g. {newest}" if newest else ""
    raise ConvertError(f"{folder}: unknown checkpoint format: found {names[:12]}{' ...' if len(names) > 12 else ''}, "
                       f"neither {sharded.METADATA} (sharded) nor {' + '.join(FULL_FILES)} (full){hint}")


def convert(src: str, dst: str, to: str) -> str:
    """Write checkpoint ``src`` in format ``to`` (full | sharded) as the new folder ``dst``."""
    if to not in ckpt.FORMATS:
        raise ConvertError(f"--to {to}: choose full or sharded")
    have = detect(src)
    if have == to:
        raise ConvertError(f"{src} is already a {to} checkpoint; nothing to convert")
    why = ckpt.incomplete(src)
    if why:
        raise ConvertError(f"{src} is not a complete checkpoint ({why}); convert a complete one")
    if os.path.exists(dst):
        raise ConvertError(f"{dst} exists; give a new folder name (the converted checkpoint is written there)")
    meta = ckpt.read_trainer(src)
    tmp = f"{os.path.abspath(dst)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        (_to_sharded if to == "sharded" else _to_full)(src, tmp, int(meta["world_size"]))
        for name in _extra_files(src, have):  # e.g. pytorch_lora_weights.safetensors
            shutil.copy2(os.path.join(src, name), os.path.join(tmp, name))
        files = {f: os.path.getsize(os.path.join(tmp, f)) for f in sorted(os.listdir(tmp))}
        ckpt.write_trainer(tmp, {**meta, "format": to, "files": files})
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _extra_files(src: str, fmt: str) -> list[str]:
    def ours(name: str) -> bool:
        if name == "trainer.pt":
            return True
        if fmt == "full":
            return name in FULL_FILES or (name.startswith("rank_") and name.endswith(".pt"))
        return name == sharded.METADATA or name.endswith(".distcp")

    return sorted(n for n in os.listdir(src) if os.path.isfile(os.path.join(src, n)) and not ours(n))


def _to_sharded(src: str, out: str, world_size: int) -> None:
    model = ckpt.load_mapped(os.path.join(src, "model.pt"))
    optim = ckpt.load_mapped(os.path.join(src, "optim.pt"))
    keys = list(optim["optimizer"].get("state", {}))
    if keys and all(isinstance(k, int) for k in keys):
        raise ConvertError(f"{src}/optim.pt keys its optimizer state by position (written before named keys); "
                           "resume the run once with this version and convert a checkpoint it saves")
    state = {"model": model["net"], "optimizer": optim["optimizer"], "scheduler": sharded.pack(optim["scheduler"]),
             "trainable_only": bool(model["trainable_only"])}
    if model.get("ema"):
        state["ema"] = model["ema"]
    for r in range(world_size):
        state[sharded.rank_key(r)] = sharded.pack(
            torch.load(os.path.join(src, f"rank_{r:05d}.pt"), map_location="cpu", weights_only=False))
    sharded.write(out, state)


def _to_full(src: str, out: str, world_size: int) -> None:
    part = sharded.read(src, only=("model", "ema", "trainable_only"))
    ema = part.get("ema")
    if ema is not None:  # DCP keeps no empty dicts
        ema.setdefault("shadow", {})
        ema.setdefault("buffers", {})
    torch.save({"net": part.get("model", {}), "ema": ema, "trainable_only": bool(part["trainable_only"])},
               os.path.join(out, "model.pt"))
    del part
    part = sharded.read(src, only=("optimizer", "scheduler"))
    torch.save({"optimizer": part["optimizer"], "scheduler": sharded.unpack(part["scheduler"])},
               os.path.join(out, "optim.pt"))
    del part
    for r in range(world_size):
        key = sharded.rank_key(r)
        torch.save(sharded.unpack(sharded.read(src, only=(key,))[key]), os.path.join(out, f"rank_{r:05d}.pt"))
