"""One benchmark setting (shape x full/LoRA x reference/hal path): its AC plan, build, warm-up,
timing, and the retries with a safer plan after a failure. An out-of-memory is recorded in
its Result, never fatal."""

from __future__ import annotations

import math
import statistics
import time
import traceback
from dataclasses import dataclass, field

import torch

from cosmos_hal.bench import budget
from cosmos_hal.bench.device import _backend, device_total_bytes, free_memory, is_oom, peak_gb, reserved_gb
from cosmos_hal.bench.flops import Shape, train_flops
from cosmos_hal.bench.step import StepInputs, build_model, forward_loss, train_step
from cosmos_hal.train import ac

LR, BETAS, EPS, WD = 2**-14.5 * 0.6, (0.9, 0.99), 1e-8, 0.1  # upstream Predict2-2B recipe


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
        if setting.path == "reference" or not args.retry or budget.over_budget(args, expected_s):
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


def _log(msg: str) -> None:
    print(msg, flush=True)
