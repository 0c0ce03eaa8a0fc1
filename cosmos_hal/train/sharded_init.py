"""Build the DiT under FSDP2 without a full copy on any device (torchtitan's meta-device init).

Why: materializing the whole fp32 DiT on every rank before ``fully_shard`` needs 4 bytes per
parameter on each device (56 GB for Predict2-14B), also under memory=offload_params, whose
point is to keep the weights in host memory. So when the run shards (memory_plan.uses_fsdp),
build_model leaves the DiT, its adapters and the Predict1 logvar head on the meta device,
parallelize() applies fully_shard, and ``materialize`` allocates only this rank's shards (on
the device, or in host memory under offload_params) and fills them one tensor at a time with
the values the unsharded build gives: the seeded init (models/init.py, same names and order),
``model_path``'s tensors (read_checked: safetensors memory-mapped, so each rank reads only the
slices it keeps; NVIDIA .pt files are read on the host as before), the adapters' seeded factors,
DoRA's row norms of the base weights, and the logvar head.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from cosmos_hal.train.parallelize import transformer_blocks


def shard_of(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The part of ``full`` this rank holds of ``param``: a DTensor's Shard(d) placements cut
    as torch.chunk cuts (FSDP2's and DTensor's rule); a plain tensor holds all of it."""
    if not hasattr(param, "device_mesh"):
        return full
    coordinate = param.device_mesh.get_coordinate()
    for mesh_dim, placement in enumerate(param.placements):
        if placement.is_shard():
            chunks = torch.chunk(full, param.device_mesh.size(mesh_dim), dim=placement.dim)
            i = coordinate[mesh_dim]
            full = chunks[i] if i < len(chunks) else full.narrow(placement.dim, 0, 0)
    local = param.to_local()
    if full.shape != local.shape:
        raise RuntimeError(f"shard_of: slice {tuple(full.shape)} does not match the local shard {tuple(local.shape)}")
    return full


def _bare_model(model):
    from cosmos_hal.models.dit import build_transformer

    return build_transformer(model.cosmos_hal_preset, meta=True, install_hal_processor=False)


def initial_values(model: nn.Module, exp):
    """(name, full value on the host) for every parameter and buffer of build_model's ``model``:
    what the unsharded build_model puts there, in the order its seeded init draws."""
    from cosmos_hal.models import init, lora
    from cosmos_hal.models.loading import read_checked
    from cosmos_hal.train import loss as losses

    params = dict(model.named_parameters())
    bare = _bare_model(model)  # the DiT before adapters: the names (and order) its init and model_path use
    base_name = {n.replace(".base_layer.", "."): n for n in params
                 if lora._adapter_part(n) is None and not n.startswith(losses.LOGVAR_ATTR + ".")}
    shapes = [(n, p.shape) for n, p in bare.named_parameters()]
    if sorted(base_name) != sorted(n for n, _ in shapes):
        raise RuntimeError("sharded init: the model's base parameters are not the preset's")
    if exp.model_path:
        state = read_checked(bare, exp.model_path)
        values = ((n, state[n]) for n, _ in shapes)
    else:
        values = init.init_values(shapes, seed=exp.seed)
    done = set()
    for name, full in values:
        name = base_name[name]
        yield name, full
        done.add(name)
        magnitude = name.replace(".base_layer.weight", f".lora_magnitude_vector.{lora.ADAPTER_NAME}.weight")
        if magnitude != name and magnitude in params:  # DoRA: ||W|| per row of this base weight
            yield magnitude, lora.row_norms(full)
            done.add(magnitude)
    for name, p in params.items():
        if name not in done and lora._adapter_part(name) is not None:
            yield name, lora.initial_value(name, p.shape, seed=exp.seed, init=exp.lora.init, rank=exp.lora.rank)
    if hasattr(model, losses.LOGVAR_ATTR):
        head = losses.LogVarHead(seed=exp.seed)
        if exp.model_path:
            losses.load_upstream_logvar(head, exp.model_path)
        for name, value in head.state_dict().items():
            yield f"{losses.LOGVAR_ATTR}.{name}", value


@torch.no_grad()
def materialize(model: nn.Module, exp, device: torch.device, *, offload: bool = False) -> int:
    """Allocate this rank's shards of a meta-device, fully_shard-ed ``model`` (in host memory
    when ``offload``) and fill them with ``initial_values``; buffers go to ``device``.
    Returns the bytes of parameters this rank holds."""
    model.to_empty(device=torch.device("cpu") if offload else device)  # FSDP2 re-pads (and pins) the shards
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    filled = set()
    for name, full in initial_values(model, exp):
        if name in params:
            p = params[name]
            (p.to_local() if hasattr(p, "to_local") else p).copy_(shard_of(full, p))
        else:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = full.to(device=device, dtype=buffers[name].dtype)
        filled.add(name)
    missing = sorted((set(params) | set(buffers)) - filled)
    if missing:
        raise RuntimeError(f"sharded init left {len(missing)} tensors unfilled, e.g. {missing[:5]}")
    return sum((p.to_local() if hasattr(p, "to_local") else p).nbytes for p in params.values())


@contextlib.contextmanager
def probe_weights(model: nn.Module, device: torch.device, seed: int = 0):
    """Real weights for what activation checkpointing's auto plan runs of a meta-device model
    (the embeddings and transformer_blocks[0]; train/ac.py ``auto_plan`` measures memory, not
    values: the seeded-init rule drawn by a CPU generator), put back on meta afterwards."""
    from cosmos_hal.models import init

    later = {id(p) for block in transformer_blocks(model)[1:] for p in block.parameters()}
    slots = [(m, leaf, p) for m in model.modules() for leaf, p in m._parameters.items()
             if p is not None and p.is_meta and id(p) not in later]
    names = {id(p): n for n, p in model.named_parameters()}
    values = dict(init.init_values([(names[id(p)], p.shape) for _, _, p in slots], seed=seed, method="torch"))
    for m, leaf, p in slots:
        m._parameters[leaf] = nn.Parameter(values[names[id(p)]].to(device), requires_grad=p.requires_grad)
    try:
        yield model
    finally:
        for m, leaf, p in slots:
            m._parameters[leaf] = p
