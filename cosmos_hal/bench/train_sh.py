"""Training speed as users get it: ``train.sh`` runs (the user's command with synthetic data) in a
matrix of shapes x modes x paths, summarised beside the diffusers reference step of
``tools/bench_train_step.py`` measured in the same call.

Why through train.sh: the bench tool times one step function; a user's run also pays for the
data loader, EMA, the schedule, logging and whatever defaults the experiment picks. A speed-up
the plain command does not get is not delivered, so this is the number docs/benchmarks.md
quotes. Runs go to one device each (several devices run several jobs at once, each on its own).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

NOMINAL_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0}  # dense bf16, NVIDIA's data sheets (SXM)

PATH_OVERRIDES = {"default": [], "plain": ["fast=off"]}


@dataclass
class Job:
    """One train.sh run (or the reference bench) and where it writes."""

    name: str
    kind: str  # "train" | "reference"
    shape: str  # FRAMESxHxW
    mode: str = ""  # full | lora
    path: str = ""  # default | plain
    out_dir: str = ""
    rc: int | None = None
    wall_s: float = 0.0
    device_slot: str = ""


@dataclass
class RunSummary:
    name: str
    shape: str
    mode: str
    path: str
    rc: int | None
    s_per_step: float = float("nan")
    step_times_s: list = field(default_factory=list)
    samples_per_s: float = float("nan")
    peak_gb: float = float("nan")
    fast_line: str = ""
    ac_line: str = ""
    wall_s: float = 0.0


def mode_overrides(mode: str, lora_rank: int) -> list[str]:
    if mode == "full":
        return []
    if mode == "lora":
        return ["lora.kind=lora", f"lora.rank={lora_rank}", f"lora.alpha={lora_rank}"]
    raise ValueError(f"mode {mode!r}: choose full or lora")


def train_command(repo: str, exp: str, job: Job, *, iters: int, lora_rank: int, extra: list[str],
                  nproc: int = 1) -> list[str]:
    frames, height, width = job.shape.split("x")
    return ["bash", os.path.join(repo, "train.sh"), f"--EXP={exp}", f"--nproc_per_node={nproc}",
            f"output_dir={job.out_dir}", f"max_iter={iters}", "logging_iter=1", f"save_iter={iters + 1}",
            "save_at_end=false", "resume=false", "data.synthetic=true", "data.synthetic_videos=2",
            "data.latent_cache=true", "data.num_workers=1", f"data.num_frames={frames}",
            f"data.height={height}", f"data.width={width}",
            *mode_overrides(job.mode, lora_rank), *PATH_OVERRIDES[job.path], *extra]


def reference_command(repo: str, job: Job, *, preset: str, modes: str, lora_rank: int, budget_s: float,
                      fp32: bool = False, ceiling_size: int = 8192) -> list[str]:
    return [sys.executable, os.path.join(repo, "tools", "bench_train_step.py"), "--preset", preset,
            *(["--fp32"] if fp32 else []), "--shapes", job.shape,
            "--modes", modes, "--paths", "reference", "--warmup", "1", "--repeats", "3",
            "--lora-rank", str(lora_rank), "--estimate", "", "--ceiling-size", str(ceiling_size), "--time-budget-s", str(budget_s),
            "--out", os.path.join(job.out_dir, "bench_train_step.json")]


def stop_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM to the job's process group; after it exits or ``grace_s`` passes, SIGKILL to
    whatever of the group is left (stragglers, or a group that ignored SIGTERM)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5.0)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass


def run_jobs(jobs: list[tuple[Job, list[str]]], slots: list[dict], *, timeout_s: float, log=print,
             on_done=None) -> None:
    """Run the commands, one per slot at a time (each slot: an environment, e.g. one device).
    ``on_done()`` runs after each job (under a lock), so a report exists even if the whole
    call is cut short."""
    queue = list(jobs)
    lock = threading.Lock()
    running: set = set()

    def on_signal(signum, frame):  # SIGTERM/SIGINT: end every job's process group, then exit
        queue.clear()
        for proc in list(running):
            stop_group(proc)
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)

    def worker(slot_env: dict, label: str):
        while True:
            with lock:
                if not queue:
                    return
                job, cmd = queue.pop(0)
            os.makedirs(job.out_dir, exist_ok=True)
            job.device_slot = label
            t0 = time.perf_counter()
            log(f"[bench_train_sh] start {job.name} on {label}")
            with open(os.path.join(job.out_dir, "command.log"), "w") as fh:
                proc = subprocess.Popen(cmd, env={**os.environ, **slot_env}, stdout=fh, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # its own group: a timeout ends every rank
                with lock:
                    running.add(proc)
                try:
                    job.rc = proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    stop_group(proc)
                    job.rc = 124
                with lock:
                    running.discard(proc)
            job.wall_s = time.perf_counter() - t0
            log(f"[bench_train_sh] {job.name}: rc={job.rc} in {job.wall_s:.0f} s")
            if on_done is not None:
                with lock:
                    on_done()

    threads = [threading.Thread(target=worker, args=(env, label)) for label, env in
               ((s.get("label", str(i)), s.get("env", {})) for i, s in enumerate(slots))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def summarize_run(job: Job, *, skip: int, batch: int = 1) -> RunSummary:
    """Steady state of one train.sh run: the median s/step of iterations after ``skip`` (the
    first compiles, the first two fill the latent cache, the AC plan is refined after one)."""
    out = RunSummary(job.name, job.shape, job.mode, job.path, job.rc, wall_s=job.wall_s)
    path = os.path.join(job.out_dir, "metrics.jsonl")
    if os.path.isfile(path):
        with open(path) as fh:
            recs = [json.loads(line) for line in fh if line.strip()]
        steady = [r for r in recs if r["iteration"] > skip]
        if steady:
            out.step_times_s = [r["s_per_it"] for r in steady]
            out.s_per_step = statistics.median(out.step_times_s)
            out.samples_per_s = batch / out.s_per_step
            out.peak_gb = max(r["mem_gb"] for r in recs)
    log_path = os.path.join(job.out_dir, "train_node0.log")
    if os.path.isfile(log_path):
        for line in open(log_path, errors="replace"):
            if "fast path (" in line and not out.fast_line:
                out.fast_line = line.strip()
            if "activation checkpointing auto" in line:
                out.ac_line = line.strip()  # the last one: after refinement
    return out


def reference_results(jobs: list[Job]) -> tuple[dict, float, str]:
    """(shape, mode) -> median s/step of the diffusers reference, the ceiling TFLOP/s, the device."""
    ref, ceiling, device = {}, 0.0, ""
    for job in jobs:
        path = os.path.join(job.out_dir, "bench_train_step.json")
        if not os.path.isfile(path):
            continue
        report = json.load(open(path))
        ceiling = ceiling or float(report.get("ceiling_tflops") or 0.0)
        device = device or str(report.get("device", ""))
        for s in report.get("settings", []):
            if s.get("path") == "reference" and s.get("status") == "ok":
                ref[(s["shape"], s["mode"])] = {"s": s["median_s"], "peak_gb": s.get("peak_gb")}
    return ref, ceiling, device


def nominal_peak(device: str) -> float:
    return next((v for k, v in NOMINAL_PEAK_TFLOPS.items() if k in device), 0.0)


def report(summaries: list[RunSummary], ref: dict, ceiling: float, device: str, preset_name: str) -> dict:
    """Rows with speed-up against the reference and MFU against the measured ceiling and the
    card's nominal peak (analytic model FLOPs: cosmos_hal.bench.flops)."""
    from cosmos_hal.bench.flops import Shape, train_flops
    from cosmos_hal.models.presets import get_preset

    preset = get_preset(preset_name)
    peak = nominal_peak(device)
    rows = []
    for s in summaries:
        f, h, w = (int(x) for x in s.shape.split("x"))
        flop = train_flops(preset, Shape(f, h, w, text_tokens=preset.text_max_length,
                                                  temporal=preset.vae_temporal))
        tflops = flop / s.s_per_step / 1e12 if s.s_per_step == s.s_per_step else float("nan")
        r = ref.get((s.shape, s.mode), {})
        rows.append({**asdict(s), "tflops": tflops,
                     "mfu_ceiling": tflops / ceiling if ceiling else None,
                     "mfu_nominal": tflops / peak if peak else None,
                     "reference_s": r.get("s"), "reference_peak_gb": r.get("peak_gb"),
                     "speedup": (r["s"] / s.s_per_step) if r.get("s") and s.s_per_step == s.s_per_step else None})
    return {"device": device, "ceiling_tflops": ceiling, "nominal_peak_tflops": peak, "preset": preset_name,
            "rows": rows}


def markdown(rep: dict) -> str:
    def pct(x):
        return f"{100 * x:.1f} %" if isinstance(x, float) else "-"

    def num(x, fmt):
        return format(x, fmt) if isinstance(x, (int, float)) and x == x else "-"

    lines = [f"Device: {rep['device'] or '?'}; bf16 matmul ceiling measured in this run "
             f"{rep['ceiling_tflops']:.0f} TFLOP/s; nominal dense bf16 peak {rep['nominal_peak_tflops']:.0f} TFLOP/s", "",
             "| shape | mode | path | s/step (median) | samples/s | peak GB | reference s/step | speed-up | "
             "MFU (ceiling) | MFU (nominal) | rc |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rep["rows"]:
        lines.append(f"| {r['shape']} | {r['mode']} | {r['path']} | {num(r['s_per_step'], '.3f')} | "
                     f"{num(r['samples_per_s'], '.3f')} | {num(r['peak_gb'], '.1f')} | {num(r['reference_s'], '.3f')} | "
                     + (f"{r['speedup']:.2f}x" if r["speedup"] else "-")
                     + f" | {pct(r['mfu_ceiling'])} | {pct(r['mfu_nominal'])} | {r['rc']} |")
    return "\n".join(lines) + "\n"
