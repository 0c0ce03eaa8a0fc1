"""Time one denoising step of the Cosmos DiT with cosmos_hal's attention processor and with
diffusers' default one, in the same process (tools/bench_infer.py).

A "step" is what ``Cosmos2VideoToWorldPipeline`` runs per denoising step: the transformer
on the conditional and then on the unconditional (negative-prompt) input, batch 1 each,
plus the guidance combination (``--cfg batched`` runs both as one batch-2 forward
instead). Random weights (``init="torch"``: seeded, no download), bf16, no grad. Both
processors run on the same model object; only the attention modules' processors are
swapped, so weights, inputs and memory layout are identical. The outputs of the last step
are compared (relative error), so a fast but wrong processor is visible.

Default shape: predict2-2b at 93 frames of 704x1280 (24 x 44 x 80 = 84,480 tokens),
512 text tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from cosmos_hal.backend import BACKEND_MODULES

PROCESSORS = ("diffusers", "cosmos_hal")


def step_inputs(model, *, frames: int, height: int, width: int, text_tokens: int, dtype, device, batch: int = 1):
    """Transformer keyword arguments shaped as the Video2World pipeline passes them."""
    from cosmos_hal import rng

    cfg = model.config
    t = (frames - 1) // 4 + 1
    shape = (batch, cfg.out_channels, t, height // 8, width // 8)
    latents = rng.normal(rng.Key(0, "bench", 0, 0, 0), shape).to(device=device, dtype=dtype)
    text = rng.normal(rng.Key(0, "bench", 0, 0, 1), (batch, text_tokens, cfg.text_embed_dim)).to(device, dtype)
    cond_mask = torch.zeros(batch, 1, t, height // 8, width // 8, device=device, dtype=dtype)
    cond_mask[:, :, 0] = 1.0  # the first latent frame is the conditioning frame
    timestep = torch.full((batch, 1, t, 1, 1), 0.5, device=device, dtype=dtype)
    timestep[:, :, 0] = 1e-4 / (1 + 1e-4)
    kwargs = dict(hidden_states=latents, timestep=timestep, encoder_hidden_states=text,
                  padding_mask=torch.zeros(1, 1, height, width, device=device, dtype=dtype),  # pixel size, as the pipeline
                  return_dict=False)
    if cfg.in_channels == cfg.out_channels + 1:
        kwargs["condition_mask"] = cond_mask
    return kwargs


def _processors(model) -> dict:
    return {m: m.processor for m in model.modules() if hasattr(m, "set_processor") and getattr(m, "processor", None) is not None}


def _set(processors: dict) -> None:
    for module, proc in processors.items():
        module.set_processor(proc)


def denoise_step(model, cond, uncond, guidance: float, batched: bool) -> torch.Tensor:
    """Two transformer evaluations and the CFG combination, as one pipeline step."""
    if batched:
        both = {k: (torch.cat([cond[k], uncond[k]]) if k in ("hidden_states", "timestep", "encoder_hidden_states",
                                                              "condition_mask") else v)
                for k, v in cond.items()}
        out = model(**both)[0]
        pos, neg = out.chunk(2)
    else:
        pos = model(**cond)[0]
        neg = model(**uncond)[0]
    return pos + guidance * (pos - neg)


def time_steps(model, cond, uncond, *, warmup: int, repeats: int, guidance: float, batched: bool, sync):
    times, out = [], None
    for i in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        out = denoise_step(model, cond, uncond, guidance, batched)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times, out


def run(args) -> dict:
    from cosmos_hal import registry
    from cosmos_hal.backend import use
    from cosmos_hal.models.dit import build_transformer
    from cosmos_hal.models.processor import install_processor

    backend = use(args.backend)
    device = backend.device(0)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    t0 = time.perf_counter()
    model = build_transformer(args.preset, dtype=dtype, device=device, init="torch", init_seed=0,
                              install_hal_processor=False).eval().requires_grad_(False)
    build_s = time.perf_counter() - t0
    diffusers_procs = _processors(model)
    n = install_processor(model)
    hal_procs = _processors(model)
    if n == 0:
        raise RuntimeError("install_processor changed no attention module; nothing to compare")

    cond = step_inputs(model, frames=args.frames, height=args.height, width=args.width,
                       text_tokens=args.text_tokens, dtype=dtype, device=device)
    uncond = dict(cond, encoder_hidden_states=torch.zeros_like(cond["encoder_hidden_states"]))
    tokens = cond["hidden_states"].shape[2] * (args.height // 16) * (args.width // 16)
    kernel, why = registry.choose("attention", backend.name)

    results, outputs = {}, {}
    order = list(PROCESSORS) * args.rounds
    with torch.inference_mode():
        for name in order:
            _set(hal_procs if name == "cosmos_hal" else diffusers_procs)
            times, out = time_steps(model, cond, uncond, warmup=args.warmup, repeats=args.repeats,
                                    guidance=args.guidance, batched=args.cfg == "batched", sync=backend.synchronize)
            results.setdefault(name, []).extend(times)
            outputs[name] = out.float()
    ref, hal = outputs["diffusers"], outputs["cosmos_hal"]
    rel = float((hal - ref).norm() / ref.norm())
    finite = bool(torch.isfinite(hal).all() and torch.isfinite(ref).all())
    summary = {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "n": len(ts)}
        for name, ts in results.items()
    }
    return {
        "preset": args.preset, "frames": args.frames, "height": args.height, "width": args.width,
        "tokens": int(tokens), "text_tokens": args.text_tokens, "dtype": args.dtype, "cfg": args.cfg,
        "forwards_per_step": 1 if args.cfg == "batched" else 2, "warmup": args.warmup, "repeats": args.repeats,
        "rounds": args.rounds, "backend": backend.name, "device": (backend.device_names() or [platform.processor()])[0],
        "versions": backend.versions(), "hal_attention_kernel": kernel.name, "hal_attention_why": why,
        "attention_modules": n, "build_s": build_s, "results": summary,
        "speedup_hal_vs_diffusers": summary["diffusers"]["median_s"] / summary["cosmos_hal"]["median_s"],
        "rel_err_hal_vs_diffusers": rel, "outputs_finite": finite, "memory": backend.memory_stats(),
    }


def markdown(report: dict) -> str:
    head = (f"predict step: {report['preset']}, {report['frames']} frames of {report['height']}x{report['width']} "
            f"({report['tokens']:,} tokens), {report['dtype']}, CFG {report['cfg']} "
            f"({report['forwards_per_step']} forward(s)/step), on {report['device']} [{report['backend']}]; "
            f"cosmos_hal attention kernel: {report['hal_attention_kernel']}")
    lines = [head, "", "| processor | median s/step | min | max | steps timed |", "| --- | ---: | ---: | ---: | ---: |"]
    for name in PROCESSORS:
        r = report["results"][name]
        lines.append(f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | {r['n']} |")
    lines.append("")
    lines.append(f"speed-up cosmos_hal vs diffusers: {report['speedup_hal_vs_diffusers']:.3f}x; "
                 f"relative difference of the step outputs: {report['rel_err_hal_vs_diffusers']:.2e}")
    return "\n".join(lines)


def build_parser(prog: str = "tools/bench_infer.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="predict2-2b", help="DiT preset (default predict2-2b)")
    p.add_argument("--frames", type=int, default=93)
    p.add_argument("--height", type=int, default=704)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--text_tokens", type=int, default=512)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--cfg", choices=["sequential", "batched"], default="sequential",
                   help="sequential: two batch-1 forwards per step, as Cosmos2VideoToWorldPipeline (default)")
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per processor and round")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per processor and round")
    p.add_argument("--rounds", type=int, default=1, help="alternate the processors this many times")
    p.add_argument("--backend", choices=list(BACKEND_MODULES), default=None)
    p.add_argument("--json_out", default=None, help="also write the JSON report to this file")
    p.add_argument("--smoke", action="store_true",
                   help="tiny preset, 5 frames of 32x48, fp32, 1+2 steps: checks the tool itself in seconds on a CPU")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.preset, args.frames, args.height, args.width = "tiny", 5, 32, 48
        args.text_tokens, args.dtype, args.warmup, args.repeats = 16, "fp32", 1, 2
    report = run(args)
    print(markdown(report))
    text = json.dumps(report, indent=None, sort_keys=True, default=str)
    print(text)
    if args.json_out:
        from cosmos_hal.fileio import write_text_atomic

        write_text_atomic(args.json_out, text + "\n")
    return 0 if report["outputs_finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
