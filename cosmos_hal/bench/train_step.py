"""One training step of the Cosmos DiT, diffusers reference path vs cosmos_hal fast path,
measured side by side on one device (issue 9). Logic for tools/bench_train_step.py.

Reference path (what a typical diffusers user runs): ``CosmosTransformer3DModel`` with its
default attention processor, ``model.enable_gradient_checkpointing()`` (every block
recomputed), ``torch.optim.AdamW`` with its default implementation flags, bf16 autocast,
fp32 master weights.

cosmos_hal path: the same model and inputs through ``cosmos_hal.train.compile.make_fast``
(fused QK-norm + RoPE processor with the kernel resolved once, per-block activation
checkpointing planned from a one-block memory probe and refined after the first step,
torch.compile of each block) and the backend's fused AdamW.

Both: random weights (no download), batch 1, synthetic cached latents and text embeddings
already on the device (the training loop reads cached latents, no VAE/T5 in the step), the
same loss and gradient clipping, no host synchronisation inside the step.

Every setting runs in its own try/except: an out-of-memory is recorded, not fatal. The model
and inputs are in bench/step.py, the 14B estimate in bench/fsdp_estimate.py, the tables in
bench/report.py, the profile summary in bench/profile.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import statistics
import time
import traceback
from dataclasses import dataclass, field

import torch

from cosmos_hal.fileio import write_text_atomic
from cosmos_hal.bench.flops import Shape, forward_flops, parse_shape, train_flops
from cosmos_hal.bench.fsdp_estimate import estimate_fsdp
from cosmos_hal.bench.report import _f, _pct, goals, markdown, ratios
from cosmos_hal.bench.step import StepInputs, build_model, forward_loss, make_inputs, train_step
from cosmos_hal.train import ac

LR, BETAS, EPS, WD = 2**-14.5 * 0.6, (0.9, 0.99), 1e-8, 0.1  # upstream Predict2-2B recipe
PATHS = ("reference", "hal", "hal-eager")
TRAIN_MODES = ("full", "lora")


# -- device helpers (vendor-neutral: cosmos_hal backend + torch.accelerator) ------------------


def _backend():
    from cosmos_hal import current_backend

    return current_backend()


def _accel():
    acc = getattr(torch, "accelerator", None)
    return acc if acc is not None and acc.is_available() else None


def free_memory() -> None:
    """Release what the last setting left: Python garbage, then the caching allocator."""
    gc.collect()
    _backend().synchronize()
    acc = _accel()
    empty = getattr(acc, "empty_cache", None) if acc is not None else None
    if empty is not None:
        empty()


def device_total_bytes() -> int:
    """The device's memory (0 if unknown: the AC plan then makes every block selective)."""
    return ac.device_total_bytes()


def peak_gb() -> float:
    stats = _backend().memory_stats()
    for key in ("peak_allocated_gb", "peak_rss_gb"):
        if key in stats:
            return float(stats[key])
    return float("nan")


def reserved_gb() -> float:
    return float(_backend().memory_stats().get("reserved_gb", float("nan")))


def is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


# -- the cosmos_hal path's memory plan -------------------------------------------------------


def _check_ac_spec(spec: str, n: int) -> None:
    ok = spec in ac.MODES or spec in ("auto", "mixed")
    if spec.startswith("selective:"):
        try:
            ok = 0.0 <= float(spec.split(":", 1)[1]) <= 1.0
        except ValueError:
            ok = False
    if "," in spec:
        modes = [m.strip() for m in spec.split(",")]
        ok = len(modes) == n and all(m in ac.MODES for m in modes)
    if not ok:
        raise SystemExit(f"--ac {spec!r}: use auto, one of {', '.join(ac.MODES)}, mixed, selective:FRACTION (0..1) "
                         f"or a comma list of {n} modes from {', '.join(ac.MODES)}")


def resolve_ac(args, model, preset, inp: StepInputs, device, amp_dtype, *, mode: str) -> tuple:
    """(per-block AC modes, block memory probe or None, how they were chosen).

    The one-block memory probe runs for ``--ac auto`` and, for the per-block table and the
    14B estimate, for every full fine-tune setting whatever ``--ac`` says."""
    n = preset.num_layers
    spec = args.ac
    memory, plan, budget = None, None, 0.0
    total = int(args.memory_budget_gb * 2**30) if args.memory_budget_gb else device_total_bytes()
    if spec == "auto" or mode == "full":
        fwd = lambda: forward_loss(model, inp, amp_dtype=amp_dtype, device_type=device.type)  # noqa: E731
        plan, memory, budget = ac.auto_plan(model, fwd, total_bytes=total, headroom=args.memory_headroom,
                                            autocast_dtype=amp_dtype, device_type=device.type)
        free_memory()
    if spec in ac.MODES:
        return [spec] * n, memory, f"--ac {spec}"
    if spec == "mixed":  # every mode once per three blocks: the smoke test's coverage
        return [ac.MODES[(i + 1) % len(ac.MODES)] for i in range(n)], memory, "--ac mixed"
    if "," in spec:
        modes = [m.strip() for m in spec.split(",")]
        if len(modes) != n or any(m not in ac.MODES for m in modes):
            raise ValueError(f"--ac {spec!r}: give {n} modes from {ac.MODES}")
        return modes, memory, "--ac list"
    if spec.startswith("selective:"):
        frac = float(spec.split(":", 1)[1])
        k = max(0, min(n, round(frac * n)))
        return ["full"] * (n - k) + ["selective"] * k, memory, f"--ac {spec}"
    if spec != "auto":
        raise ValueError(f"--ac {spec!r}: use auto, one of {', '.join(ac.MODES)}, mixed, selective:FRACTION "
                         f"or a comma list of {n} modes")
    if not total:
        return plan, memory, "auto: no device memory information, all selective"
    return plan, memory, f"auto: activation budget {budget / 2**30:.1f} GiB of {total / 2**30:.1f}"


# -- one setting ---------------------------------------------------------------------------


@dataclass
class Setting:
    shape: Shape
    mode: str  # full | lora
    path: str  # reference | hal | hal-eager


@dataclass
class Result:
    shape: str
    tokens: int
    mode: str
    path: str
    status: str = "ok"  # ok | oom | error
    error: str = ""
    step_times_s: list = field(default_factory=list)
    first_step_s: float = float("nan")
    median_s: float = float("nan")
    tokens_per_s: float = float("nan")
    model_tflop: float = float("nan")
    tflops: float = float("nan")
    mfu: float = float("nan")
    peak_gb: float = float("nan")
    reserved_gb: float = float("nan")
    loss: float = float("nan")
    trainable_params: int = 0
    fast: dict = field(default_factory=dict)
    ac_reason: str = ""
    block_memory_gb: dict = field(default_factory=dict)
    fallbacks: list = field(default_factory=list)
    profile: dict = field(default_factory=dict)


def run_setting(args, preset, setting: Setting, inp: StepInputs, device, ceiling_tflops: float,
                *, ac_override=None, compile_override=None) -> Result:
    """Build, warm up, time one setting; the caller catches failures."""
    from cosmos_hal.train.compile import fast_optimizer, make_fast

    amp_dtype = None if args.fp32 else torch.bfloat16
    refine, memory = False, None
    res = Result(shape=setting.shape.label, tokens=setting.shape.tokens(preset.patch_size), mode=setting.mode,
                 path=setting.path)
    model = build_model(preset, device, lora_rank=args.lora_rank if setting.mode == "lora" else 0, seed=args.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    res.trainable_params = sum(p.numel() for p in params)
    if setting.path == "reference":
        model.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    else:
        from cosmos_hal.train.fast_attention import install_fast_processor

        install_fast_processor(model, device=device, dtype=amp_dtype or torch.float32)  # probe what will run
        if ac_override is not None:
            modes, memory, why = ac_override, None, f"--ac {ac_override} (retry)"
        else:
            modes, memory, why = resolve_ac(args, model, preset, inp, device, amp_dtype, mode=setting.mode)
        res.ac_reason = why
        if memory is not None:
            res.block_memory_gb = memory.as_gb()
        use_compile = (setting.path == "hal" and args.compile == "on") if compile_override is None else compile_override
        res.fast = make_fast(model, ac_modes=modes, compile=use_compile, compile_backend=args.compile_backend,
                             device=device, compute_dtype=amp_dtype or torch.float32)
        refine = args.refine and args.ac == "auto" and ac_override is None and memory is not None
        optimizer = fast_optimizer(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    backend = _backend()
    kw = dict(amp_dtype=amp_dtype, device_type=device.type)
    try:
        backend.reset_peak_memory()
        allocated_before = ac.device_allocated_bytes()
        for i in range(max(1, args.warmup)):
            t0 = time.perf_counter()
            loss = train_step(model, optimizer, params, inp, **kw)
            backend.synchronize()
            if i == 0:
                res.first_step_s = time.perf_counter() - t0
                if refine:
                    again = _refine_plan(args, res, model, memory, allocated_before,
                                         lambda: train_step(model, optimizer, params, inp, **kw))
                    loss = loss if again is None else again
        backend.reset_peak_memory()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            loss = train_step(model, optimizer, params, inp, **kw)
            backend.synchronize()
            times.append(time.perf_counter() - t0)
        if args.profile:
            from cosmos_hal.bench.profile import profile_call

            res.profile = profile_call(lambda: train_step(model, optimizer, params, inp, **kw),
                                       synchronize=backend.synchronize)
        res.loss = float(loss)  # the only device->host read, after timing
        res.step_times_s = times
        res.median_s = statistics.median(times)
        res.peak_gb = peak_gb()
        res.reserved_gb = reserved_gb()
        res.model_tflop = train_flops(preset, setting.shape) / 1e12
        res.tokens_per_s = res.tokens / res.median_s
        res.tflops = res.model_tflop / res.median_s
        res.mfu = res.tflops / ceiling_tflops if ceiling_tflops else float("nan")
        if not math.isfinite(res.loss):
            res.status, res.error = "error", f"loss is {res.loss}"
    finally:
        del optimizer, params, model
        if setting.path != "reference":
            from cosmos_hal.train.compile import reset_compiler

            reset_compiler()
        free_memory()
    return res


def _refine_plan(args, res: Result, model, memory, allocated_before: int, step):
    """After the first step: upgrade the AC plan into the memory that step left free
    (ac.refine_modes), and run one more untimed step so a newly used mode compiles outside the
    timing. Returns that step's loss, or None when the plan stayed.

    The optimizer's states are created at the END of step 1, after its activation peak; every
    later step peaks with them resident, so what step 1 left allocated is added to its peak."""
    total = int(args.memory_budget_gb * 2**30) if args.memory_budget_gb else device_total_bytes()
    old = ac.block_modes(model)
    grown = max(0, ac.device_allocated_bytes() - allocated_before)
    peak = ac.device_peak_bytes() + grown  # allocator counters only (0 on the CPU: no refinement)
    new = ac.refine_modes(old, memory, total_bytes=total, peak_bytes=peak, headroom=args.memory_headroom)
    if new == old:
        return None
    ac.set_block_modes(model, new)
    res.ac_reason += (f"; refined after step 1 (peak {peak / 2**30:.1f} GiB with the "
                      f"{grown / 2**30:.1f} GiB of optimizer state it created): "
                      + ", ".join(f"{m} {old.count(m)}->{new.count(m)}" for m in ac.MODES if old.count(m) != new.count(m)))
    res.fast["ac_modes"] = new
    res.fast["ac_counts"] = {m: new.count(m) for m in ac.MODES}
    _log(f"   {res.ac_reason}")
    loss = step()
    _backend().synchronize()
    return loss


def run_setting_safely(args, preset, setting, inp, device, ceiling, expected_s: float = 0.0) -> Result:
    """run_setting inside try/except. A failed cosmos_hal setting is retried once or twice:
    after an out-of-memory with a safer plan (all selective, then all full), after any other
    error (e.g. a compiler failure) with the same plan without torch.compile."""
    fallbacks = []
    kw: dict = {}
    safer = ["selective", "full"]
    for _attempt in range(3):
        try:
            res = run_setting(args, preset, setting, inp, device, ceiling, **kw)
            res.fallbacks = fallbacks
            return res
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            kind = "oom" if is_oom(exc) else "error"
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            msg = f"{kind}: {type(exc).__name__}: {first}" + (f" (with {kw})" if kw else "")
            fallbacks.append(msg)
            tb = traceback.format_exc(limit=8)
            del exc
            free_memory()
            _log(f"  {setting.shape.label} {setting.mode} {setting.path}: {msg}")
            if kind == "error" and not args.quiet:
                _log(tb)
        if setting.path == "reference" or not args.retry or _over_budget(args, expected_s):
            break
        if kind == "oom":
            current = kw.get("ac_override")
            nxt = safer[safer.index(current) + 1] if current in safer and current != safer[-1] else (
                None if current == safer[-1] else safer[0])
            if nxt is not None and nxt == args.ac and nxt != safer[-1]:
                nxt = safer[safer.index(nxt) + 1]  # the user's own plan already failed
            if nxt is None or nxt == args.ac:
                break
            kw = dict(kw, ac_override=nxt)
        elif kw.get("compile_override") is False or setting.path != "hal" or args.compile != "on":
            break
        else:
            kw = dict(kw, compile_override=False)
    res = Result(shape=setting.shape.label, tokens=setting.shape.tokens(preset.patch_size), mode=setting.mode,
                 path=setting.path, status="oom" if fallbacks[-1].startswith("oom") else "error",
                 error=fallbacks[-1])
    res.fallbacks = fallbacks
    return res


_T0 = time.perf_counter()


def _over_budget(args, expected_s: float = 0.0) -> bool:
    """True when --time-budget-s would be exceeded (now, or by a setting expected to take
    ``expected_s`` more seconds)."""
    return bool(args.time_budget_s) and time.perf_counter() - _T0 + expected_s > args.time_budget_s


COMPILE_ESTIMATE_S = 75.0  # one or two block graphs (forward + backward) on an H100 host
SETUP_ESTIMATE_S = 15.0  # build, probe, free


def expected_seconds(args, preset, setting: Setting, done: list[dict]) -> float:
    """Rough duration of ``setting`` from the settings already measured (same shape first,
    else another shape scaled by model FLOPs); 0 when nothing is known yet."""
    ok = [r for r in done if r["status"] == "ok" and math.isfinite(r["median_s"])]
    same = [r for r in ok if r["shape"] == setting.shape.label]
    pick = [r for r in same if r["path"] == setting.path] or same
    if pick:
        step = max(r["median_s"] for r in pick)
        if setting.path != "reference" and not [r for r in same if r["path"] == setting.path]:
            step *= 0.8  # the fast path, estimated from the reference
    elif ok:
        r = max(ok, key=lambda r: r["model_tflop"])
        step = r["median_s"] * train_flops(preset, setting.shape) / 1e12 / r["model_tflop"]
    else:
        return 0.0
    compiled = setting.path == "hal" and args.compile == "on"
    seen = [r["first_step_s"] - r["median_s"] for r in ok if r["path"] == "hal" and math.isfinite(r["first_step_s"])]
    compile_s = max([COMPILE_ESTIMATE_S] + seen)  # learn from the compiles so far
    return (args.warmup + args.repeats) * step + SETUP_ESTIMATE_S + (compile_s if compiled else 0.0)


# -- matmul ceiling ------------------------------------------------------------------------


def matmul_ceiling(device, n: int = 8192, dtype=torch.bfloat16, repeats: int = 5, inner: int = 10) -> float:
    """Median bf16 n^3 matmul TFLOP/s on ``device`` (the MFU denominator of this run)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    backend = _backend()
    for _ in range(3):
        a @ b
    backend.synchronize()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        backend.synchronize()
        rates.append(2 * n**3 * inner / (time.perf_counter() - t0) / 1e12)
    del a, b
    return statistics.median(rates)


# -- numerics check --------------------------------------------------------------------------


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _grad_errors(model, truth: list) -> float:
    """||g - g_truth|| / ||g_truth|| over all parameters, one parameter at a time (a 2B model's
    gradients in float64 would not fit twice on a GPU)."""
    num = torch.zeros((), dtype=torch.float64, device=truth[0].device)
    den = torch.zeros((), dtype=torch.float64, device=truth[0].device)
    for p, t in zip((p for p in model.parameters() if p.requires_grad), truth):
        g = p.grad if p.grad is not None else torch.zeros_like(t)
        num += (g.double() - t.double()).square().sum()
        den += t.double().square().sum()
    return float(num.sqrt() / den.sqrt().clamp_min(1e-300))


def check_numerics(args, preset, device, *, shape: Shape, compile_fast: bool = False) -> dict:
    """Loss and gradients of the fast path vs the reference on identical weights and inputs.

    Truth is the reference path in float32 without autocast; the reference in bf16 autocast
    shows what bf16 alone costs. The fast path (fused processor, every AC mode in turn over the
    blocks, so each mode's policy is exercised under compile too) passes when in
    float32 it matches the truth (loss 1e-4, grads 1e-3: kernels differ) and in bf16 its error
    is within 1e-2 or within twice the reference's own bf16 error, and all is finite."""
    from cosmos_hal.train.compile import make_fast, reset_compiler

    inp = make_inputs(preset, shape, device, seed=args.seed + 1)
    out = {"shape": shape.label, "tokens": shape.tokens(preset.patch_size), "compile": compile_fast}
    ref = fast = truth = None

    def run(model, amp):
        model.zero_grad(set_to_none=True)
        loss = forward_loss(model, inp, amp_dtype=torch.bfloat16 if amp else None, device_type=device.type)
        loss.backward()
        return loss.detach().double()

    try:
        ref = build_model(preset, device, lora_rank=0, seed=args.seed)
        ref.enable_gradient_checkpointing()
        t_loss = run(ref, amp=False)
        truth = [p.grad.detach().clone() for p in ref.parameters() if p.requires_grad]
        r_loss = run(ref, amp=True)
        out["bf16_reference_loss_rel_err"] = _rel(r_loss, t_loss)
        out["bf16_reference_grad_rel_err"] = _grad_errors(ref, truth)
        fast = build_model(preset, device, lora_rank=0, seed=args.seed + 1)
        fast.load_state_dict(ref.state_dict())
        del ref
        ref = None
        free_memory()
        n = preset.num_layers
        make_fast(fast, ac_modes=[ac.LADDER[i % len(ac.LADDER)] for i in range(n)], compile=compile_fast,
                  compile_backend=args.compile_backend, device=device)
        f_loss32 = run(fast, amp=False)
        out["fp32_loss_rel_err"] = _rel(f_loss32, t_loss)
        out["fp32_grad_rel_err"] = _grad_errors(fast, truth)
        f_loss = run(fast, amp=True)
        out["bf16_fast_loss_rel_err"] = _rel(f_loss, t_loss)
        out["bf16_fast_grad_rel_err"] = _grad_errors(fast, truth)
        finite = bool(torch.isfinite(f_loss)) and all(bool(torch.isfinite(p.grad).all())
                                                      for p in fast.parameters() if p.grad is not None)
        out["finite"] = finite
        ok32 = out["fp32_loss_rel_err"] < 1e-4 and out["fp32_grad_rel_err"] < 1e-3
        okbf = all(out[f"bf16_fast_{k}_rel_err"] <= max(1e-2, 2 * out[f"bf16_reference_{k}_rel_err"])
                   for k in ("loss", "grad"))
        out["passed"] = bool(finite and ok32 and okbf)
    except Exception as exc:  # noqa: BLE001
        out.update(passed=False, error=f"{type(exc).__name__}: {exc}"[:500])
    finally:
        del ref, fast, truth
        reset_compiler()
        free_memory()
    return out


def _log(msg: str) -> None:
    print(msg, flush=True)


# -- CLI -----------------------------------------------------------------------------------


def build_parser(prog: str = "tools/bench_train_step.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
        "Examples:\n"
        "  python tools/bench_train_step.py --out bench.json             # everything (long)\n"
        "  python tools/bench_train_step.py --shapes 432x768 --modes full,lora --out b.json\n"
        "  python tools/bench_train_step.py --tiny                        # CPU smoke test of every path"))
    p.add_argument("--preset", default="predict2-2b", help="DiT preset (default predict2-2b)")
    p.add_argument("--shapes", default=None,
                   help="comma list of HEIGHTxWIDTH (or FRAMESxHEIGHTxWIDTH); default 432x768,704x1280")
    p.add_argument("--frames", type=int, default=93, help="video frames (4k+1) when a shape gives none (93)")
    p.add_argument("--text-tokens", type=int, default=512, help="text embedding tokens (512)")
    p.add_argument("--modes", default="full,lora", help="comma list of full,lora (default both)")
    p.add_argument("--paths", default=None,
                   help="comma list of reference,hal,hal-eager (hal-eager: the fast path without compile); "
                        "default reference,hal")
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per setting (>= 1; the first compiles)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per setting; the median is reported")
    p.add_argument("--ac", default=None,
                   help="cosmos_hal path checkpointing: auto (default; sized to memory from a one-block probe), "
                        "none, selective_mm (keep attention and matmul outputs), selective (keep attention "
                        "outputs), full, selective:FRACTION (that fraction selective, rest full), "
                        "mixed (every mode in turn), or a comma list with one mode per block")
    p.add_argument("--memory-budget-gb", type=float, default=0.0,
                   help="device memory the auto plan may assume (default: the device's total)")
    p.add_argument("--memory-headroom", type=float, default=0.10,
                   help="fraction of device memory the auto plan leaves free (default 0.10)")
    p.add_argument("--no-refine", dest="refine", action="store_false",
                   help="keep the auto plan as probed; by default it is upgraded after the first step into the "
                        "memory that step left free (compiled blocks keep less than the eager probe measures)")
    p.add_argument("--compile", choices=("on", "off"), default="on", help="torch.compile each block on the hal path")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (inductor; aot_eager for tests)")
    p.add_argument("--no-retry", dest="retry", action="store_false",
                   help="do not retry a failed hal setting with a safer plan (selective, then full; eager)")
    p.add_argument("--check-numerics", action="store_true",
                   help="first compare fast-path loss/grads with the reference at --numerics-shape")
    p.add_argument("--numerics-shape", default="17x128x128", help="shape of the numerics check (small)")
    p.add_argument("--numerics-compile", action="store_true", help="run the numerics check with compile on")
    p.add_argument("--estimate", default="predict2-14b", help="preset for the FSDP memory estimate ('' = none)")
    p.add_argument("--estimate-devices", type=int, default=8)
    p.add_argument("--ceiling-size", type=int, default=8192, help="matmul size of the MFU ceiling (8192)")
    p.add_argument("--fp32", action="store_true", help="no autocast (CPU debugging)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true",
                   help="CPU-sized smoke run: tiny preset with one block per AC mode, tiny shapes, every path and mode, "
                        "mixed AC, compile with aot_eager, numerics check; seconds on a CPU")
    p.add_argument("--time-budget-s", type=float, default=0.0,
                   help="skip a setting that is not expected to end within this many seconds from the "
                        "start (estimated from the settings measured so far; skipped ones are recorded); "
                        "the JSON/markdown are rewritten after every setting anyway")
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile one more step of each setting and report device time by kernel "
                        "family (attention, matmul, fused element-wise, optimizer, ...) and the top kernels")
    p.add_argument("--out", default="", help="write the JSON report here (atomically, after every setting)")
    p.add_argument("--md", default="", help="write the markdown table here")
    p.add_argument("--quiet", action="store_true")
    return p


def apply_tiny(args) -> None:
    args.preset = "tiny"
    args.shapes = args.shapes or "9x32x64"
    args.text_tokens = min(args.text_tokens, 16)
    args.paths = args.paths or "reference,hal,hal-eager"
    args.ac = args.ac or "mixed"
    args.compile_backend = "aot_eager" if args.compile_backend == "inductor" else args.compile_backend
    args.ceiling_size = min(args.ceiling_size, 256)
    args.warmup, args.repeats = min(args.warmup, 1), min(args.repeats, 2)
    args.check_numerics = True
    args.numerics_shape = "9x32x32" if args.numerics_shape == "17x128x128" else args.numerics_shape
    args.estimate = ""


def run(args) -> dict:
    from cosmos_hal.models.presets import get_preset

    if args.tiny:
        apply_tiny(args)
    args.shapes = args.shapes or "432x768,704x1280"
    args.ac = args.ac or "auto"
    args.paths = args.paths or "reference,hal"
    preset = get_preset(args.preset)
    if args.tiny:
        preset = preset.replace(num_layers=len(ac.MODES), name=f"tiny-{len(ac.MODES)}")
    shapes = [parse_shape(s.strip(), args.frames, args.text_tokens) for s in args.shapes.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    paths = [q.strip() for q in args.paths.split(",") if q.strip()]
    for m in modes:
        if m not in TRAIN_MODES:
            raise SystemExit(f"--modes: unknown mode {m!r}; use {','.join(TRAIN_MODES)}")
    for q in paths:
        if q not in PATHS:
            raise SystemExit(f"--paths: unknown path {q!r}; use {','.join(PATHS)}")
    _check_ac_spec(args.ac, preset.num_layers)
    if args.warmup < 1 or args.repeats < 1:
        raise SystemExit("--warmup and --repeats must be >= 1 (the first step compiles and allocates state)")
    backend = _backend()
    device = backend.device(0)
    backend.set_device(0)  # a no-op on the host
    report = {"device": ", ".join(backend.device_names()[:1]) or device.type, "backend": backend.name,
              "versions": backend.versions(), "preset": preset.name, "args": vars(args),
              "ceiling_size": args.ceiling_size, "settings": [], "ratios": [], "block_memory_gb": {},
              "estimates": [], "flops": {}}
    _log(f"backend {backend.name} on {report['device']}; preset {preset.name}")
    report["ceiling_tflops"] = matmul_ceiling(device, args.ceiling_size)
    _log(f"bf16 matmul ceiling ({args.ceiling_size}^3): {report['ceiling_tflops']:.1f} TFLOP/s")
    if args.check_numerics:
        nshape = parse_shape(args.numerics_shape, args.frames, args.text_tokens)
        report["numerics"] = check_numerics(args, preset, device, shape=nshape, compile_fast=args.numerics_compile)
        _log(f"numerics: {json.dumps(report['numerics'])}")
    save_report(args, report)
    for shape in shapes:
        f = forward_flops(preset, shape)
        report["flops"][shape.label] = {"forward_tflop": f["total"] / 1e12, "tokens": f["tokens"],
                                        "self_attention_fraction": f["self_attention_fraction"]}
        _log(f"{shape.label}: {f['tokens']} tokens, forward {f['total'] / 1e12:.1f} TFLOP "
             f"({100 * f['self_attention_fraction']:.0f} % self-attention)")
        inp = make_inputs(preset, shape, device, seed=args.seed)
        for mode in modes:
            for path in paths:
                expected = expected_seconds(args, preset, Setting(shape, mode, path), report["settings"])
                if _over_budget(args, expected):
                    res = Result(shape=shape.label, tokens=shape.tokens(preset.patch_size), mode=mode, path=path,
                                 status="skipped", error=f"--time-budget-s {args.time_budget_s:g}: would end at "
                                 f"about {time.perf_counter() - _T0 + expected:.0f} s")
                    report["settings"].append(dataclasses.asdict(res))
                    _log(f"-- {shape.label} {mode} {path}: skipped (time budget)")
                    continue
                _log(f"-- {shape.label} {mode} {path}")
                res = run_setting_safely(args, preset, Setting(shape, mode, path), inp, device,
                                         report["ceiling_tflops"], expected_s=expected)
                report["settings"].append(dataclasses.asdict(res))
                if res.block_memory_gb and mode == "full":
                    report["block_memory_gb"][shape.label] = res.block_memory_gb
                _log(f"   {res.status}: {_f(res.median_s, 3)} s/step, {_f(res.tflops, 1)} TFLOP/s, "
                     f"MFU {_pct(res.mfu)}, peak {_f(res.peak_gb, 1)} GB, first step {_f(res.first_step_s, 1)} s"
                     + (f", plan {res.fast.get('ac_counts')}" if res.fast else "")
                     + (f" [{res.error}]" if res.error else "") + f" (elapsed {time.perf_counter() - _T0:.0f} s)")
                if res.profile:
                    from cosmos_hal.bench.profile import summary_lines

                    for line in summary_lines(res.profile):
                        _log("   " + line)
                report["ratios"] = ratios([Result(**r) for r in report["settings"]])
                report["goals"] = goals(report["settings"], report["ratios"])
                save_report(args, report)
        del inp
        free_memory()
        if args.estimate and shape.label in report["block_memory_gb"]:
            try:
                est = estimate_fsdp(report["block_memory_gb"][shape.label], shape.label, shape.tokens(),
                                    preset_2b=preset, preset_big=get_preset(args.estimate),
                                    devices=args.estimate_devices,
                                    device_gb=device_total_bytes() / 2**30 or 80.0)
                report["estimates"].append(est)
            except Exception as exc:  # noqa: BLE001
                report["estimates"].append({"error": f"{type(exc).__name__}: {exc}"})
    report["ratios"] = ratios([Result(**r) for r in report["settings"]])
    report["goals"] = goals(report["settings"], report["ratios"])
    for est in report["estimates"]:
        if "error" in est:
            _log(f"estimate failed: {est['error']}")
    report["estimates"] = [e for e in report["estimates"] if "error" not in e]
    return report


def save_report(args, report: dict) -> str:
    md = markdown(report)
    if args.out:
        write_text_atomic(args.out, json.dumps(report, indent=1, default=str))
    if args.md:
        write_text_atomic(args.md, md + "\n")
    return md


def main(argv=None) -> int:
    global _T0
    _T0 = time.perf_counter()
    args = build_parser().parse_args(argv)
    report = run(args)
    print(save_report(args, report), flush=True)
    if args.out:
        _log(f"wrote {args.out}")
    failed = [s for s in report["settings"] if s["status"] not in ("ok", "skipped")]
    numerics_ok = report.get("numerics", {}).get("passed", True)
    return 0 if not failed and numerics_ok else 1
