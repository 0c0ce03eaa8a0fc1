"""Per-device memory of a large Cosmos DiT under FSDP, from a smaller model's measured block.

Why: a 14B model cannot be probed on one 80 GB device, but its blocks are the 2B's blocks made
wider, so the 2B per-block measurement (train/ac.py ``probe_block_memory``) scales to it.
"""

from __future__ import annotations

from cosmos_hal.train import ac


def estimate_fsdp(block_memory_gb: dict, shape_label: str, tokens: int, *, preset_2b, preset_big,
                  devices: int = 8, device_gb: float = 80.0, ema: bool = True) -> dict:
    """Per-device memory of ``preset_big`` under FSDP2 across ``devices``, from the 2B block probe.

    Activations of a block scale with tokens x hidden size, so the 2B per-block bytes are
    multiplied by hidden_big / hidden_2b (same tokens). Sharded state: fp32 weights, grads and
    two AdamW moments (16 bytes/param), plus the EMA's fp32 shadows (4 bytes/param; the upstream
    experiments keep an EMA) / devices. Unsharded: two blocks' bf16 weights (the one computing
    and the prefetched one; what train/parallelize.apply_fsdp's MixedPrecisionPolicy(param_dtype=
    bf16, reduce_dtype=fp32) gathers under bf16)."""
    from cosmos_hal.models.dit import build_transformer

    big = build_transformer(preset_big, meta=True, install_hal_processor=False)
    n_params = sum(p.numel() for p in big.parameters())
    per_block_params = sum(p.numel() for p in big.transformer_blocks[0].parameters())
    del big
    scale = preset_big.hidden_size / preset_2b.hidden_size
    sharded = (16 + (4 if ema else 0)) * n_params / devices / 2**30
    unsharded = 2 * 2 * per_block_params / 2**30
    out = {"preset": preset_big.name, "shape": shape_label, "tokens": tokens, "devices": devices, "ema": ema,
           "params": n_params, "sharded_state_gb": sharded, "unsharded_blocks_gb": unsharded,
           "activation_scale": scale, "per_mode": {}}
    saved = block_memory_gb.get("saved", {})
    output = block_memory_gb.get("output", 0.0)
    transient = block_memory_gb.get("backward_peak", 0.0) * scale
    for mode, gb in saved.items():
        acts = preset_big.num_layers * (gb + output) * scale
        total = sharded + unsharded + acts + transient
        out["per_mode"][mode] = {"activations_gb": acts, "total_gb": total, "fits": total < 0.92 * device_gb}
    sel = (saved.get("selective", 0.0) + output) * scale
    none_extra = (saved.get("none", 0.0) - saved.get("selective", 0.0)) * scale
    room = 0.92 * device_gb - sharded - unsharded - transient - preset_big.num_layers * sel
    out["max_blocks_without_ac"] = (max(0, min(preset_big.num_layers, int(room // none_extra)))
                                    if room > 0 and none_extra > 0 else 0)
    # the auto plan's ladder (ac.plan_modes) over the memory the state and transient leave
    scaled = ac.BlockMemory(saved={m: gb * 2**30 for m, gb in saved.items()}, backward_peak=0,
                            output=int(output * 2**30)).scaled(scale)
    budget = (0.92 * device_gb - sharded - unsharded - transient) * 2**30
    plan = ac.plan_modes(preset_big.num_layers, scaled, budget) if saved else []
    acts = sum(scaled.per_block(m) for m in plan) / 2**30
    out["plan"] = {m: plan.count(m) for m in ac.LADDER if plan.count(m)}
    out["plan_total_gb"] = sharded + unsharded + transient + acts
    out["plan_fits"] = bool(plan) and out["plan_total_gb"] < 0.92 * device_gb
    return out
