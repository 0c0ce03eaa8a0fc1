"""The plan of one node for a big DiT: per-device memory and expected step time for each
context-parallel split and state placement, from per-block measurements (or the analytic
estimate when none is given). ``tools/plan_14b.py`` prints it; docs/benchmarks.md quotes it.

Why a program: the 14B recipe at 93x704x1280 on eight 80 GB cards cannot be tried on the one
GPU this project is lent, but its blocks can be measured one at a time under an 80 GB cap
(``cosmos_hal.bench.memory_measure``), and everything else is arithmetic that should be rerun
when a measurement changes, not retyped.

Model per device of ``devices`` ranks, context parallelism ``cp`` (each sample's tokens split cp
ways, global batch devices/cp), FSDP2 over all ranks:

* state: ``train.memory_plan.estimate`` (fp32 weights, grads, moments by placement, EMA, two
  gathered bf16 blocks, VAE);
* activations: each block's bytes kept in its AC mode (measured at the full sample on one
  device) / cp; ``ac.plan_modes`` picks the fastest modes that fit 90 % of the device;
* time per block: forward+backward in its mode / cp (the ranks split tokens and heads), plus the
  Ulysses all-to-alls (q, k, v and the output: forward, recompute, backward) and what of FSDP2's
  all-gather + reduce-scatter the block's compute does not hide, at ``link_gbps`` per rank;
  the optimizer step from moved bytes (offload: PCIe both ways and a host AdamW).
"""

from __future__ import annotations

import dataclasses
import json

from cosmos_hal.train import ac, memory_plan

GIB = 2**30
MODES = ("full", "selective", "selective_mm", "none")


@dataclasses.dataclass
class Assumptions:
    """Rates the time model needs; each is printed with the table."""

    tflops: float = 450.0  # achieved bf16 TFLOP/s of a block (docs/benchmarks.md run d: 466 at 704x1280, H100)
    link_gbps: float = 150.0  # per-rank NVLink bandwidth for all-to-all / all-gather / reduce-scatter, GB/s
    hbm_gbps: float = 3000.0  # device memory bandwidth for the optimizer step, GB/s
    pcie_gbps: float = 25.0  # host <-> device, GB/s each way (offload)
    host_adamw_gbps: float = 20.0  # host AdamW streaming rate, GB/s of state touched


def analytic_blocks(preset, shape) -> dict:
    """Per-block figures at ``shape`` (one sample, one device) without a measurement: memory
    from memory_plan's per-element coefficients, time from FLOPs at Assumptions.tflops."""
    from cosmos_hal.bench.flops import forward_flops

    tokens = shape.tokens(preset.patch_size)
    elems = tokens * preset.hidden_size
    f = forward_flops(preset, shape)
    fwd = (f["total"] - sum(v for k, v in f["parts"].items() if k in ("patch_embed", "final", "time_embed",
                                                                        "crossattn_proj"))) / preset.num_layers
    sdpa = f["parts"]["self_attn_sdpa"] / preset.num_layers
    flops = {"none": 3 * fwd, "selective_mm": 3 * fwd, "selective": 4 * fwd - sdpa, "full": 4 * fwd}
    return {"source": "analytic", "tokens": tokens, "hidden": preset.hidden_size,
            "saved_gb": {m: memory_plan.SAVED_PER_ELEM[m] * elems / GIB for m in MODES},
            "output_gb": memory_plan.OUTPUT_PER_ELEM * elems / GIB,
            "backward_peak_gb": memory_plan.TRANSIENT_PER_ELEM * elems / GIB,
            "flops": flops}


def block_ms(block: dict, rates: Assumptions) -> dict:
    """ms of one block's forward+backward per mode: measured ("ms") where present, else from FLOPs."""
    measured = block.get("ms") or {}
    return {m: float(measured[m]) if measured.get(m) is not None else block["flops"][m] / (rates.tflops * 1e12) * 1e3
            for m in MODES if measured.get(m) is not None or m in block.get("flops", {})}


def plan_row(exp, block: dict, *, devices: int, cp: int, memory: str, device_gb: float,
             rates: Assumptions) -> dict:
    """One (cp, memory) row: per-device GiB, the AC plan, whether it fits, expected s/step."""
    alt = dataclasses.replace(exp, context_parallel=cp, memory=memory)
    est = memory_plan.estimate(alt, devices, memory, ac_mode="full")
    n = _num_layers(exp)
    scale = exp.batch_size / cp
    saved = {m: v * GIB * scale for m, v in block["saved_gb"].items() if v is not None}
    mem = ac.BlockMemory(saved=saved, backward_peak=int(block["backward_peak_gb"] * GIB * scale),
                         output=int(block["output_gb"] * GIB * scale))
    grads = 0.0 if est.grads_persistent else est.grads
    usable = device_gb * GIB * (1 - memory_plan.HEADROOM)
    budget = usable - est.state - mem.backward_peak - 6 * mem.output
    modes = ac.plan_modes(n, mem, budget)
    acts = sum(mem.per_block(m) for m in modes)
    peak = est.state + 6 * mem.output + max(acts + mem.backward_peak, grads + mem.backward_peak)
    fits = peak <= usable and acts <= max(0.0, budget) + 1
    ms = block_ms(block, rates)
    compute = sum(ms.get(m, ms["full"]) for m in modes) / cp / 1e3
    tokens_rank = block["tokens"] * exp.batch_size / cp
    a2a = 0.0 if cp == 1 else n * 3 * 4 * tokens_rank * block["hidden"] * 2 * (cp - 1) / cp / (rates.link_gbps * 1e9)
    params_block = _block_params(exp)
    fsdp_bytes = params_block * (2 * 2 + 4) * (devices - 1) / devices  # gather bf16 twice, reduce-scatter fp32
    exposed_fsdp = max(0.0, n * fsdp_bytes / (rates.link_gbps * 1e9) - compute) if devices > 1 else 0.0
    total, _, trainable = memory_plan.param_counts(exp.preset, exp.lora.kind, exp.lora.rank, exp.lora.target_modules)
    shard, trainable_shard = total / devices, trainable / devices
    state_touched = trainable_shard * 28  # AdamW reads w, g, m, v and writes w, m, v in fp32
    if memory == "device":
        opt = state_touched / (rates.hbm_gbps * 1e9)
    elif memory == "offload_optimizer":  # grads out, updates in, AdamW on the host
        opt = trainable_shard * 8 / (rates.pcie_gbps * 1e9) + state_touched / (rates.host_adamw_gbps * 1e9)
    else:  # fp32 shards in for the forward and the backward gathers, grads out, AdamW on the host
        opt = shard * 12 / (rates.pcie_gbps * 1e9) + state_touched / (rates.host_adamw_gbps * 1e9)
    step = compute + a2a + exposed_fsdp + opt
    samples = devices // cp * exp.batch_size
    return {"context_parallel": cp, "memory": memory, "fits": bool(fits),
            "plan": {m: modes.count(m) for m in ac.LADDER if modes.count(m)},
            "state_gib": est.state / GIB, "activations_gib": acts / GIB, "transient_gib": mem.backward_peak / GIB,
            "peak_gib": peak / GIB, "device_gib": device_gb,
            "s_per_step": step, "compute_s": compute, "all_to_all_s": a2a, "fsdp_exposed_s": exposed_fsdp,
            "optimizer_s": opt, "samples_per_step": samples, "s_per_sample": step / samples}


def _num_layers(exp) -> int:
    from cosmos_hal.models.presets import get_preset

    return get_preset(exp.preset).num_layers


def _block_params(exp) -> int:
    return memory_plan.param_counts(exp.preset)[1]


def node_plan(exp, block: dict, *, devices: int = 8, device_gb: float = 80.0, rates: Assumptions | None = None,
              memories=memory_plan.MEMORY_MODES) -> dict:
    """Every (context_parallel dividing ``devices``, memory placement) row, and the chosen one:
    the fastest per sample among those that fit, preferring upstream's split on a tie."""
    rates = rates or Assumptions()
    rows = [plan_row(exp, block, devices=devices, cp=cp, memory=m, device_gb=device_gb, rates=rates)
            for cp in (c for c in range(1, devices + 1) if devices % c == 0) for m in memories]
    fitting = [r for r in rows if r["fits"]]
    best = min(fitting, key=lambda r: (round(r["s_per_sample"], 3), r["context_parallel"] != exp.upstream_context_parallel),
               default=None)
    return {"experiment": exp.name, "preset": exp.preset, "devices": devices, "device_gb": device_gb,
            "block_source": block.get("source", "measured"), "assumptions": dataclasses.asdict(rates),
            "rows": rows, "chosen": best}


def load_block(path: str, key: str) -> dict:
    """The per-block entry ``key`` ("predict2-14b@93x704x1280") of a memory_measure JSON."""
    with open(path) as fh:
        data = json.load(fh)
    blocks = data.get("blocks", {})
    if key not in blocks:
        raise KeyError(f"{path}: no block measurement {key!r}; it has {', '.join(blocks) or 'none'} "
                       f"(tools/measure_memory.py --blocks {key} makes it)")
    return blocks[key]


def table(plan: dict) -> str:
    """Markdown table of the rows, the chosen one in bold."""
    head = ("| context_parallel | memory | AC plan | state GiB | activations GiB | transient GiB | peak GiB | fits | "
            "s/step | samples/step | s/sample |\n| ---: | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    lines = [head]
    for r in plan["rows"]:
        mark = "**" if r is plan["chosen"] else ""
        ac_plan = " + ".join(f"{k} {v}" for k, v in r["plan"].items())
        lines.append(f"| {mark}{r['context_parallel']}{mark} | {r['memory']} | {ac_plan} | {r['state_gib']:.1f} | "
                     f"{r['activations_gib']:.1f} | {r['transient_gib']:.1f} | {r['peak_gib']:.1f} | "
                     f"{'yes' if r['fits'] else 'no'} | {r['s_per_step']:.2f} | {r['samples_per_step']} | "
                     f"{r['s_per_sample']:.2f} |")
    return "\n".join(lines)
