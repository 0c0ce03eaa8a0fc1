"""Memory measurements with the device capped (issue 18 point 3), for tools/measure_memory.py.

* ``measure_block``: one block of a preset (the model built with a single block) at a shape:
  bytes kept per AC mode, block output, backward peak (``ac.probe_block_memory``) and the
  forward+backward time per mode. The allocator is capped first (``Backend.set_memory_fraction``),
  so a 141 GB card measures what an 80 GB one could; a mode that runs out of memory is recorded
  as such. ``node_plan`` derives the 8-device plan from it.
* ``run_capped``: the user's command, ``train.sh`` with ``memory_cap_gb=`` (the same cap, set by
  the trainer), per experiment and cap: s/step and peak, the placement the planner chose, or its
  stop message when it refused.

Nothing here names a device; on the CPU (no counters) the memory figures are 0 and only the
code path and times are exercised (CI, tiny shapes).

The JSON (what tools/plan_14b.py --measured reads; GiB are 2^30 bytes)::

    {"device": str, "backend": str, "date": str, "versions": {...},
     "blocks": {"<preset>@<FxHxW>": {"preset", "shape", "tokens", "hidden", "batch": 1, "autocast",
                "cap_gb", "cap_fraction",
                "saved_gb": {mode: GiB kept from forward to backward, or null if it ran out of memory},
                "output_gb": the block output, "backward_peak_gb": largest backward transient,
                "ms": {mode: median ms of one forward+backward, or null}, "oom": [modes]}},
     "runs": [{"name", "experiment", "mode": "full"|"lora", "shape", "cap_gb", "rc", "memory_line",
               "stop_message", "s_per_step", "peak_gb", "ac_line", "wall_s"}]}

mode is one of full, selective, selective_mm, none (train/ac.py).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import torch

from cosmos_hal.train import ac

MODES = ("full", "selective", "selective_mm", "none")


def cap_device(gb: float) -> float:
    """Cap this process's allocator at ``gb`` GiB; returns the fraction set (0: no device counters)."""
    from cosmos_hal import current_backend

    backend = current_backend()
    total = float(backend.memory_stats().get("total_gb", 0.0))
    if not gb or not total:
        return 0.0
    fraction = min(1.0, gb / total)
    backend.set_memory_fraction(fraction)
    return fraction


def measure_block(preset_name: str, shape, *, cap_gb: float = 0.0, modes=MODES, repeats: int = 3,
                  warmup: int = 1, seed: int = 0) -> dict:
    """Per-block memory (GiB) and forward+backward ms of ``preset_name`` at ``shape`` (Shape)."""
    from cosmos_hal import current_backend
    from cosmos_hal.models.dit import build_transformer
    from cosmos_hal.models.presets import get_preset
    from cosmos_hal.train.parallelize import apply_fast_attention
    from cosmos_hal.train.probe_inputs import forward_loss, make_inputs

    backend = current_backend()
    fraction = cap_device(cap_gb)
    device = backend.device(0)
    amp = torch.bfloat16 if backend.supports_bf16() and backend.is_accelerator() else None
    full = get_preset(preset_name)
    preset = dataclasses.replace(full, num_layers=1)  # one block: what a 14B block needs fits one device
    model = build_transformer(preset, dtype=torch.float32, device=device, init_seed=seed)
    apply_fast_attention(model, device)
    ac.apply_block_ac(model, "full")
    inp = make_inputs(preset, shape, device, seed=seed)
    args, kwargs = ac.capture_block_inputs(model, lambda: forward_loss(model, inp, amp_dtype=amp,
                                                                         device_type=device.type))
    del inp
    block = ac.transformer_blocks(model)[0]
    out = {"preset": full.name, "shape": shape.label, "tokens": shape.tokens(full.patch_size),
           "hidden": full.hidden_size, "batch": 1, "autocast": str(amp).replace("torch.", "") if amp else "none",
           "cap_gb": cap_gb, "cap_fraction": fraction, "saved_gb": {}, "ms": {}, "oom": [],
           "output_gb": 0.0, "backward_peak_gb": 0.0}
    for mode in modes:
        try:
            mem = ac.probe_block_memory(model, args, kwargs, autocast_dtype=amp, device_type=device.type, modes=(mode,))
            if mode not in mem.saved:  # the probe ran out of memory in this mode
                raise torch.OutOfMemoryError(mode)
            out["saved_gb"][mode] = mem.saved[mode] / 2**30
            out["output_gb"] = mem.output / 2**30
            out["backward_peak_gb"] = max(out["backward_peak_gb"], mem.backward_peak / 2**30)
            out["ms"][mode] = _time_block(model, args, kwargs, mode, amp, device.type, repeats, warmup, backend)
        except torch.OutOfMemoryError:
            out["oom"].append(mode)
            out["saved_gb"][mode] = out["ms"][mode] = None
            block.zero_grad(set_to_none=True)
            backend.empty_cache()
    return out


def _time_block(model, args, kwargs, mode, amp, device_type, repeats, warmup, backend) -> float:
    """Median ms of one forward+backward of the model's only block in ``mode``."""
    ac.set_block_modes(model, [mode])
    block = ac.transformer_blocks(model)[0]
    hidden = args[0].detach().clone().requires_grad_(True)
    times = []
    for i in range(warmup + repeats):
        backend.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device_type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            y = block(hidden, *args[1:], **kwargs)
        y.float().square().mean().backward()
        backend.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
        hidden.grad = None
        block.zero_grad(set_to_none=True)
        del y
    return statistics.median(times)


@dataclasses.dataclass
class CappedRun:
    """One train.sh run under ``memory_cap_gb``: what the planner chose and what it measured."""

    name: str
    experiment: str
    mode: str  # full | lora
    shape: str
    cap_gb: float
    rc: int | None = None
    memory_line: str = ""
    stop_message: str = ""
    s_per_step: float = float("nan")
    peak_gb: float = float("nan")
    ac_line: str = ""
    wall_s: float = 0.0


def run_capped(repo: str, work: str, experiment: str, specs: list[tuple[str, str, float]], *, iters: int,
               timeout_s: float, lora_rank: int = 32, extra: list[str] = (), budget_s: float = float("inf"),
               log=print) -> list[CappedRun]:
    """train.sh for each (mode, FRAMESxHxW, cap GiB; 0 = uncapped) in ``specs``, one after another;
    runs that would start after ``budget_s`` seconds are skipped (rc None)."""
    from cosmos_hal.bench.train_sh import Job, run_jobs, summarize_run, train_command

    jobs, runs = [], []
    t0 = time.perf_counter()
    for mode, shape, cap in specs:
        name = f"{mode}_{shape}_{'uncapped' if not cap else f'{cap:g}gb'}"
        job = Job(name=name, kind="train", shape=shape, mode=mode, path="default", out_dir=os.path.join(work, name))
        cmd = train_command(repo, experiment, job, iters=iters, lora_rank=lora_rank,
                            extra=[f"memory_cap_gb={cap:g}", *extra])
        jobs.append((job, cmd))
        runs.append(CappedRun(name=name, experiment=experiment, mode=mode, shape=shape, cap_gb=cap))
    for job, cmd in jobs:
        left = budget_s - (time.perf_counter() - t0)
        if left < 20:
            log(f"[measure_memory] {job.name}: skipped (time budget spent)")
            continue
        run_jobs([(job, cmd)], [{"label": "device 0"}], timeout_s=min(timeout_s, left), log=log)
    for (job, _), run in zip(jobs, runs):
        s = summarize_run(job, skip=1)
        run.rc, run.s_per_step, run.peak_gb, run.ac_line, run.wall_s = job.rc, s.s_per_step, s.peak_gb, s.ac_line, job.wall_s
        text = open(os.path.join(job.out_dir, "command.log"), errors="replace").read() \
            if os.path.isfile(os.path.join(job.out_dir, "command.log")) else ""
        mem = [ln.split("memory: ", 1)[1] for ln in text.splitlines() if "memory: " in ln and "GiB" in ln]
        run.memory_line = mem[-1] if mem else ""
        if "error: memory:" in text:
            run.stop_message = text[text.index("error: memory:"):].split("\nusage:")[0].strip()
    return runs


def markdown(result: dict) -> str:
    """The report: per-block table, then the capped runs."""
    lines = [f"# Memory measurements ({result.get('device', '?')}, {result.get('date', '')})", ""]
    for key, b in result.get("blocks", {}).items():
        lines += [f"## {key} (one block, cap {b['cap_gb']:g} GiB, autocast {b['autocast']})", "",
                  "| mode | kept GiB | ms fwd+bwd |", "| --- | ---: | ---: |"]
        for m in MODES:
            if m in b["saved_gb"]:
                kept, ms = b["saved_gb"][m], b["ms"].get(m)
                lines.append(f"| {m} | {'OOM' if kept is None else f'{kept:.2f}'} | "
                             f"{'OOM' if ms is None else f'{ms:.1f}'} |")
        lines += ["", f"block output {b['output_gb']:.2f} GiB, backward peak {b['backward_peak_gb']:.2f} GiB", ""]
    runs = result.get("runs", [])
    if runs:
        lines += ["## train.sh under memory_cap_gb", "",
                  "| run | rc | memory (planner) | s/step | peak GiB | stopped with |", "| --- | ---: | --- | ---: | ---: | --- |"]
        for r in runs:
            stop = r["stop_message"].splitlines()[0][:120] if r["stop_message"] else ""
            lines.append(f"| {r['name']} | {r['rc']} | {r['memory_line'][:90]} | {r['s_per_step']:.2f} | "
                         f"{r['peak_gb']:.1f} | {stop} |")
    return "\n".join(lines) + "\n"
