"""Read DiT weights from a diffusers folder, a safetensors file or NVIDIA's checkpoints, and
load them only when they fit the model exactly.

Why strict: a partial load (``strict=False``, which upstream uses) trains a half-random model
without a word. Here every missing key, unexpected key and shape mismatch is collected and
raised together in ``CheckpointMismatchError``, naming the file.

Formats:
- diffusers: a model folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, or
  sharded with ``diffusion_pytorch_model.safetensors.index.json``) or a pipeline folder with a
  ``transformer/`` subfolder; a single ``.safetensors`` file.
- NVIDIA cosmos-predict2: ``model-720p-16fps.pt`` (released weights) and training
  checkpoints ``checkpoints/model/iter_000001000.pt`` whose keys carry ``net.`` (trained
  weights) and ``net_ema.`` (EMA) prefixes; pick with ``ema=``. Keys are converted by
  ``cosmos_hal.models.convert``.
- NVIDIA cosmos-predict1: released ``model.pt`` (``Cosmos-Predict1-7B-Text2World``: ``net.*`` plus
  ``logvar.*``, loaded upstream by ``load_network_model`` in
  ``cosmos_predict1/diffusion/inference/inference_utils.py``), FSDP ``iter_*_reg_model.pt`` /
  ``iter_*_ema_model.pt`` (same layout), and DDP ``iter_*.pt`` whose ``model`` entry is
  ``DiffusionModel.state_dict()`` = ``{"model": {net.*}, "ema": {net-blocks-...}}`` (EMAModelTracker
  buffers: parameter names with "." -> "-", ``cosmos_predict1/utils/ema.py`` ``get_buffer_name``);
  the EMA half is read as ``net_ema.*``.
- cosmos_hal's own training ``model.pt`` (``net``: trained weights, ``ema``: the EMA shadows), read
  as ``net.``/``net_ema.`` the same way.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import torch

from cosmos_hal.models import convert

log = logging.getLogger(__name__)

SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
SAFETENSORS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
BIN_NAME = "diffusion_pytorch_model.bin"
NVIDIA_SUFFIXES = (".pt", ".pth", ".ckpt")
NET_PREFIX, EMA_PREFIX = "net.", "net_ema."


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model; lists every missing/unexpected/mis-shaped key."""

    def __init__(self, source, missing, unexpected, mismatched, limit: int = 40, hint: str | None = None):
        self.source, self.missing, self.unexpected, self.mismatched = source, missing, unexpected, mismatched
        lines = [f"checkpoint {source} does not fit the model:"]

        def block(title, items):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {x}" for x in items[:limit])
                if len(items) > limit:
                    lines.append(f"    ... and {len(items) - limit} more")

        block("missing keys (in the model, not in the checkpoint)", missing)
        block("unexpected keys (in the checkpoint, not in the model)", unexpected)
        block(
            "shape mismatches (key: checkpoint vs model)",
            [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in mismatched],
        )
        lines.append(hint or "  check the preset (e.g. predict2-2b vs predict2-2b-t2i vs predict2-14b, "
                     "predict1-7b-text2world vs predict1-7b-video2world) matches the checkpoint")
        super().__init__("\n".join(lines))


def find_diffusers_dir(path) -> Path:
    """The folder holding the transformer's config.json: ``path`` or ``path/transformer``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    for folder in (path, path / "transformer"):
        if (folder / "config.json").is_file():
            return folder
    raise FileNotFoundError(
        f"{path} is not a diffusers model folder: no config.json in it or in {path / 'transformer'}"
    )


def read_diffusers_config(path) -> dict:
    folder = find_diffusers_dir(path)
    with open(folder / "config.json") as f:
        return json.load(f)


def _read_safetensors(file: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(os.fspath(file), device="cpu")


def diffusers_weight_files(path) -> list[Path]:
    """The files holding a diffusers model folder's tensors (one safetensors file, the shards of
    an index, or one .bin), found without reading them; `train --check` calls it before launch."""
    folder = find_diffusers_dir(path)
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are not in {folder}: {missing}")
        return [folder / shard for shard in shards]
    if (folder / SAFETENSORS_NAME).is_file():
        return [folder / SAFETENSORS_NAME]
    singles = sorted(folder.glob("*.safetensors"))
    if len(singles) == 1:
        return singles
    if (folder / BIN_NAME).is_file():
        return [folder / BIN_NAME]
    raise FileNotFoundError(
        f"no weights in {folder}: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX} (+ shards) or {BIN_NAME}"
    )


def read_diffusers_dir(path) -> dict:
    """All tensors of a diffusers model folder (single file, sharded, or .bin)."""
    files = diffusers_weight_files(path)
    if files[0].name == BIN_NAME:
        return torch.load(files[0], map_location="cpu", weights_only=True)
    state = {}
    for file in files:
        state.update(_read_safetensors(file))
    return state


def training_checkpoint_weights(path: Path) -> Path:
    """A cosmos_hal training checkpoint folder (``iter_NNNNNNNNN/``) stands for its ``model.pt``;
    a sharded one (torch.distributed.checkpoint's ``.metadata``) is refused with the command
    that converts it."""
    if not path.is_dir() or (path / "config.json").is_file() or (path / "transformer").is_dir():
        return path
    if (path / ".metadata").is_file():
        raise ValueError(f"{path} is a sharded checkpoint (checkpoint.format=sharded): convert it with "
                         f"`python tools/convert_checkpoint.py --to full {path} {path}_full` and give {path}_full")
    if (path / "model.pt").is_file() and (path / "trainer.pt").is_file():
        return path / "model.pt"
    return path


def _torch_load(file: Path):
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # NVIDIA's checkpoints may pickle TransformerEngine extra state (io.BytesIO); the
        # user asked for this file by name, so fall back to a full unpickle, loudly.
        log.warning("%s is not loadable with weights_only=True (%s); unpickling it fully", file, exc)
        return torch.load(file, map_location="cpu", weights_only=False)


def _fold_ema_tracker(obj):
    """cosmos-predict1's ``{"model": {net.*}, "ema": {net-blocks-...}}`` as one ``net.``/``net_ema.`` dict."""
    model, ema = obj.get("model"), obj.get("ema")
    if not (isinstance(model, dict) and isinstance(ema, dict) and ema):
        return obj
    if not all(isinstance(k, str) and "." not in k for k in ema):  # not EMAModelTracker buffer names
        return obj
    out = dict(model)
    for key, value in ema.items():
        name = key.replace("-", ".")
        if name.startswith(NET_PREFIX):
            out[EMA_PREFIX + name[len(NET_PREFIX) :]] = value
    return out


def _fold_cosmos_hal(obj):
    """A cosmos_hal training ``model.pt`` (``{"net": {...}, "ema": {"shadow", "buffers"} | None}``) as one
    ``net.``/``net_ema.`` dict, so ``ema=True`` (``--ema``) reads its EMA weights as it does NVIDIA's."""
    net, ema = obj.get("net"), obj.get("ema")
    if "trainable_only" not in obj or not isinstance(net, dict):
        return obj
    out = {NET_PREFIX + k: v for k, v in net.items()}
    if isinstance(ema, dict) and ema.get("shadow"):
        out.update({EMA_PREFIX + k: v for k, v in {**ema["shadow"], **(ema.get("buffers") or {})}.items()})
    return out


def _unwrap(obj, source) -> dict:
    """The tensor dict inside a checkpoint (``{"model": ...}``, ``{"state_dict": ...}``, ...)."""
    if isinstance(obj, dict):
        obj = _fold_cosmos_hal(obj)
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = _fold_ema_tracker(obj)
            if any(isinstance(v, torch.Tensor) for v in obj.values()):
                break
            for key in ("model", "state_dict", "module", "net"):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a state dict, found {type(obj).__name__}")
    return obj


def select_net(state: dict, *, ema: bool, source="checkpoint") -> dict:
    """Strip the ``net.`` or ``net_ema.`` prefix of an NVIDIA training checkpoint.

    Keys with neither prefix are kept only when the checkpoint has no prefixed keys at all
    (released weights are saved without them)."""
    has_net = any(k.startswith(NET_PREFIX) for k in state)
    has_ema = any(k.startswith(EMA_PREFIX) for k in state)
    if not has_net and not has_ema:
        if ema:
            raise KeyError(f"{source} has no {EMA_PREFIX}* keys (no EMA weights); load it with ema=False (without --ema)")
        return dict(state)
    prefix = EMA_PREFIX if ema else NET_PREFIX
    if not (has_ema if ema else has_net):
        raise KeyError(
            f"{source} has no {prefix}* keys; it holds "
            f"{'net_ema' if has_ema else 'net'} weights, load it with ema={not ema} ({'with' if has_ema else 'without'} --ema)"
        )
    others = [k for k in state if not k.startswith((NET_PREFIX, EMA_PREFIX))]
    if others:
        log.info("%s: ignoring %d keys outside net./net_ema. (e.g. %s)", source, len(others), others[:3])
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_transformer_state_dict(weights, *, ema: bool = False) -> dict:
    """A state dict in diffusers naming from any supported source (see module doc)."""
    return _read(weights, ema)[0]


def _read(weights, ema: bool) -> tuple[dict, str | None]:
    """(state dict in diffusers naming, the upstream family it was converted from or None)."""
    if isinstance(weights, dict):
        state, source = weights, "state dict"
    else:
        path = Path(weights)
        source = os.fspath(path)
        if not path.exists():
            raise FileNotFoundError(
                f"weights not found: {path} (give a diffusers folder, a .safetensors file or an NVIDIA .pt checkpoint)"
            )
        path = training_checkpoint_weights(path)
        if path.is_dir():
            state = read_diffusers_dir(path)
        elif path.suffix == ".safetensors":
            state = _read_safetensors(path)
        elif path.suffix in NVIDIA_SUFFIXES:
            state = _unwrap(_torch_load(path), source)
        else:
            raise ValueError(f"{path}: unknown weights format (want a folder, .safetensors or {NVIDIA_SUFFIXES})")
    state = select_net(state, ema=ema, source=source)
    # the Predict1 loss's uncertainty head (train/loss.py LogVarHead) trains beside the DiT, not in it
    state = {k: v for k, v in state.items() if not k.startswith("logvar.")}
    upstream = convert.upstream_family(state) if convert.looks_like_upstream(state) else None
    if upstream == "predict1":
        state, folded = convert.fold_predict1_lora(state)
        if folded:
            log.warning("%s: merged cosmos-predict1 LoRA factors of %d attention projections into the weights "
                        "(scale %g, upstream's get_fa_ca_qv_lora_config)", source, folded, convert.PREDICT1_LORA_SCALE)
    if upstream:
        state, dropped = convert.upstream_to_diffusers(state)
        if dropped:
            log.info("%s: dropped %d non-weight upstream keys (e.g. %s)", source, len(dropped), dropped[:3])
    return state, upstream


def _with_upstream_name(key: str, family: str) -> str:
    try:
        return f"{key} (upstream: {convert.diffusers_key_to_upstream(key, family)})"
    except KeyError:
        return key


UNKNOWN_LAYOUT_HINT = (
    "  none of its keys is a key of the model: unknown layout. Expected diffusers naming "
    "(transformer_blocks.0.attn1.to_q.weight), cosmos-predict2 (net.blocks.0.self_attn.q_proj.weight) or "
    "cosmos-predict1 (net.blocks.block0.blocks.0.block.attn.to_q.0.weight); convert other checkpoints first"
)


def check_fit(expected: dict, state: dict, source="checkpoint", upstream: str | bool | None = None) -> None:
    """Raise CheckpointMismatchError unless ``state`` has exactly the keys and shapes of ``expected``.

    ``upstream``: the NVIDIA family ("predict1"/"predict2"; True = "predict2") the checkpoint was
    named in; missing keys also show that name."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        (k, tuple(state[k].shape), tuple(expected[k]))
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k])
    ]
    hint = UNKNOWN_LAYOUT_HINT if expected and state and not set(expected) & set(state) else None
    if upstream:
        family = upstream if isinstance(upstream, str) else "predict2"
        missing = [_with_upstream_name(k, family) for k in missing]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, missing, unexpected, mismatched, hint=hint)


def read_checked(model, weights, *, ema: bool = False) -> dict:
    """``weights`` in diffusers naming, checked to fit ``model`` (meta or real) exactly, on the
    host (safetensors memory-mapped: a tensor is read when it is used)."""
    source = "state dict" if isinstance(weights, dict) else os.fspath(weights)
    state, upstream = _read(weights, ema)
    model_family = "predict1" if getattr(model.config, "extra_pos_embed_type", None) == "learnable" else "predict2"
    if upstream and upstream != model_family:
        raise CheckpointMismatchError(source, [], [], [], hint=(
            f"  it is a cosmos-{upstream} checkpoint and the model a {model_family} DiT: choose a {upstream} preset "
            f"(e.g. --preset {'predict1-7b-video2world' if upstream == 'predict1' else 'predict2-2b'}"
            f"{', or --family predict1' if upstream == 'predict1' else ''})"))
    check_fit({k: v.shape for k, v in model.state_dict().items()}, state, source, upstream=upstream)
    return state


def load_transformer_weights(model, weights, *, ema: bool = False, dtype=None, device=None) -> None:
    """Load ``weights`` into ``model`` (meta or real) after checking that they fit exactly."""
    state = read_checked(model, weights, ema=ema)
    model_state = model.state_dict()
    device = torch.device(device) if device is not None else None
    cast = {}
    for k, ref in model_state.items():
        target_device = device or (ref.device if not ref.is_meta else torch.device("cpu"))
        value = state[k].to(device=target_device)
        cast[k] = value.to(dtype or ref.dtype) if value.is_floating_point() else value
    model.load_state_dict(cast, strict=True, assign=True)
