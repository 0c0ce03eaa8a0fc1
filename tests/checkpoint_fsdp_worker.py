"""Run under torchrun (gloo, CPU) by tests/test_checkpoint_sharded.py: a small FSDP2 model
trains K steps, saves a checkpoint in both formats, trains N more (the uninterrupted run); then
fresh objects restore each checkpoint (host allocations during the restore recorded with
torch.profiler) and train the same N steps. Writes this rank's results to <out>/rank<r>.json.

Usage: torchrun --nproc_per_node=2 tests/checkpoint_fsdp_worker.py OUT
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

from cosmos_hal import dist
from cosmos_hal.data.sampler import RngDistributedSampler
from cosmos_hal.train import checkpoint as ckpt
from cosmos_hal.train.ema import PowerEMA

WIDTH, LAYERS, K, N = 256, 12, 3, 3


def build(world):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)]).to(world.device)
    if world.world_size > 1:
        for layer in model:
            fully_shard(layer)
        fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i))
    ema = PowerEMA(model, 6.9372)
    loader = RngDistributedSampler(64, seed=0, rank=world.rank, world_size=world.world_size)
    return dict(model=model, optimizer=opt, scheduler=sched, ema=ema, loader=loader)


def step(objs, it: int, world) -> float:
    g = torch.Generator().manual_seed(1000 * it + world.rank)
    x = (torch.randn(4, WIDTH, generator=g) + 0.01 * torch.rand(4, WIDTH)).to(world.device)  # global RNG too
    loss = objs["model"](x).pow(2).mean()
    loss.backward()
    objs["optimizer"].step()
    objs["scheduler"].step()
    objs["ema"].update(objs["model"], it)
    objs["optimizer"].zero_grad()
    return float(loss.detach())


def local(t):
    return (t.to_local() if hasattr(t, "to_local") else t).detach().clone()


def snapshot(objs) -> dict:
    sd = {f"net.{k}": local(v) for k, v in objs["model"].state_dict().items()}
    sd.update({f"ema.{k}": local(v) for k, v in objs["ema"].shadow.items()})
    for i, (p, st) in enumerate(objs["optimizer"].state.items()):
        sd.update({f"opt.{i}.{k}": local(v) for k, v in st.items()})
    return sd


def host_peak_during(fn, mapped_sizes=()) -> tuple[int, int]:
    """(peak, end) bytes allocated during ``fn`` above what was live before it, from
    torch.profiler's memory events: each op's own allocations and frees. A file that
    torch.load(mmap=True) maps shows up as one event of the file's size: page cache, not an
    allocation, so events of exactly ``mapped_sizes`` bytes are left out."""
    import gc

    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    gc.disable()  # no collection of older garbage inside the window (its frees would hide allocations)
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        gc.enable()
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        if e.name == "[memory]" and abs(e.self_cpu_memory_usage) in mapped_sizes:
            continue
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak, live


def device_allocated() -> int:
    """Bytes this process holds on its device (0 without allocator counters), peak counter reset."""
    import cosmos_hal.backend as _backend

    be = _backend.current()
    be.synchronize()
    be.reset_peak_memory()
    return int(be.memory_stats().get("allocated_gb", 0) * 2**30)


def device_peak_bytes() -> int:
    import cosmos_hal.backend as _backend

    _backend.current().synchronize()
    return int(_backend.current().memory_stats().get("peak_allocated_gb", 0) * 2**30)


def main(out: str) -> None:
    world = dist.init()
    state_bytes = 4 * 4 * sum(p.numel() for p in nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])
                              .parameters())  # weights + EMA + two AdamW moments, fp32
    objs = build(world)
    for it in range(K):
        step(objs, it, world)
    roots = {fmt: os.path.join(out, fmt) for fmt in ("full", "sharded")}
    for fmt, root in roots.items():
        ckpt.save(root, K, **objs, experiment={"name": "w"}, trainable_only=False, keep_last=2, format=fmt)
    ref_losses = [step(objs, it, world) for it in range(K, K + N)]
    result = {"ref_losses": ref_losses, "state_bytes": state_bytes}
    ref = snapshot(objs)
    for fmt, root in roots.items():
        rng_before = torch.get_rng_state()
        fresh = build(world)
        torch.manual_seed(12345)  # the restore must put the RNG back
        folder = ckpt.latest(root)
        it = {}
        mapped = {os.path.getsize(os.path.join(folder, f)) for f in ("model.pt", "optim.pt") if fmt == "full"}
        before = device_allocated()
        peak, end = host_peak_during(lambda: it.setdefault("it", ckpt.restore(folder, **fresh)), mapped)
        device_peak = device_peak_bytes() - before  # on a device with allocator counters (GPU, NPU)
        losses = [step(fresh, i, world) for i in range(it["it"], it["it"] + N)]
        got = snapshot(fresh)
        result[fmt] = {"iteration": it["it"], "losses": losses, "peak": peak, "end": end, "device_peak": device_peak,
                       "same_state": sorted(k for k in ref if not torch.equal(ref[k], got[k])) or "all equal"}
        torch.set_rng_state(rng_before)
    if world.is_main:  # control: the probe sees a plain (not memory-mapped) load of the weights
        path = os.path.join(ckpt.latest(roots["full"]), "model.pt")
        result["plain_load_peak"] = host_peak_during(
            lambda: torch.load(path, map_location="cpu", weights_only=False))[0]
    with open(os.path.join(out, f"rank{world.rank}.json"), "w") as fh:
        json.dump(result, fh)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
