"""Context parallelism against data parallelism on the same devices, through train.sh.

Why: ``context_parallel=N`` is worth its name when N devices sharing one sample's tokens train
nearly as many samples per second as the same N devices each on a sample of its own (issue 19
point 2 asks for 85 % at 93x704x1280 on two GPUs). Both runs are the user's command with
synthetic data; the CP run also profiles two iterations right after its warm-up
(``COSMOS_HAL_PROFILE``, train/profiling.py), which are left out of its steady state.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from cosmos_hal.bench import train_sh


RUNS = ("cp", "dp", "before")


def plan(repo: str, exp: str, shape: str, *, nproc: int, cp: int, warmup: int, steady: int, work: str,
         extra: list[str], profile: bool = True, before_repo: str = "",
         runs: tuple = ("cp", "dp", "before")) -> list[tuple[train_sh.Job, list[str], int]]:
    """(job, command, iterations to skip) for the ``runs`` asked: "cp", context_parallel=cp on
    nproc processes (profiled); "dp", context_parallel=1 on nproc processes (each its own
    sample); "before", the CP run from another checkout (``before_repo``: the code before a
    change; skipped without one)."""
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        raise ValueError(f"runs {unknown}: choose from {', '.join(RUNS)}")
    out = []

    def add(name, overrides, skip, env=(), repo_dir=repo):
        job = train_sh.Job(name, "train", shape, "full", "default", out_dir=os.path.join(work, name))
        cmd = train_sh.train_command(repo_dir, exp, job, iters=skip + steady, lora_rank=0, nproc=nproc,
                                     extra=[*overrides, *extra])
        out.append((job, (["env", *env] if env else []) + cmd, skip))

    window = f"{warmup + 1}-{warmup + 2}"
    prof_env = [f"COSMOS_HAL_PROFILE={window}", f"COSMOS_HAL_PROFILE_DIR={os.path.join(work, f'cp{cp}', 'profile')}"]
    if "cp" in runs:
        add(f"cp{cp}", [f"context_parallel={cp}"], warmup + (2 if profile else 0), env=prof_env if profile else ())
    if "dp" in runs:
        add("cp1", ["context_parallel=1"], warmup)
    if "before" in runs and before_repo:
        add(f"cp{cp}_before", [f"context_parallel={cp}"], warmup, repo_dir=before_repo)
    return out


def profiles(folder: str) -> list[dict]:
    """The per-rank profile summaries a run wrote (summary_rank<R>.json), rank order."""
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.startswith("summary_rank") and n.endswith(".json"))
    return [json.load(open(os.path.join(folder, n))) for n in names]


def report(runs: list[tuple[train_sh.Job, int]], *, nproc: int, cp: int, batch: int, device: str,
           work: str) -> dict:
    """Rows (s/step, samples/s over all devices) and the ratio CP / DP of samples per second."""
    rows = {}
    for job, skip in runs:
        if job.rc is None:
            continue
        group = cp if job.name.startswith(f"cp{cp}") else 1
        samples = batch * (nproc // group)  # samples per step over all devices
        rows[job.name] = {**asdict(train_sh.summarize_run(job, skip=skip, batch=samples)), "samples_per_step": samples,
                          "steady_from": skip + 1}
    ratio = lambda a, b: (rows[a]["samples_per_s"] / rows[b]["samples_per_s"]  # noqa: E731
                          if a in rows and b in rows and rows[b]["samples_per_s"] > 0 else None)
    return {"device": device, "nproc": nproc, "cp": cp, "rows": rows,
            "ratio": ratio(f"cp{cp}", "cp1"), "ratio_before": ratio(f"cp{cp}_before", "cp1"),
            "profile": profiles(os.path.join(work, f"cp{cp}", "profile"))}


def _num(x, fmt):
    return format(x, fmt) if isinstance(x, (int, float)) and x == x else "-"


def markdown(rep: dict) -> str:
    pct = lambda x: f"{100 * x:.1f} %" if isinstance(x, float) else "-"  # noqa: E731
    lines = [f"Device: {rep['device'] or '?'}; {rep['nproc']} processes", "",
             "| run (cpN: context_parallel=N) | s/step (median) | samples/step | samples/s | peak GB | steady from iteration | rc |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in rep["rows"].items():
        lines.append(f"| {name} | {_num(r['s_per_step'], '.3f')} | {r['samples_per_step']} | "
                     f"{_num(r['samples_per_s'], '.3f')} | {_num(r['peak_gb'], '.1f')} | {r['steady_from']} | {r['rc']} |")
    lines += ["", f"context_parallel={rep['cp']} / context_parallel=1, samples per second: {pct(rep['ratio'])}"
              + (f" (before: {pct(rep['ratio_before'])})" if rep.get("ratio_before") is not None else "")]
    for p in rep["profile"]:
        lines += ["", f"Profile, rank {p.get('rank')}, iterations {p.get('window')} ({p['source']}), per iteration: "
                  f"busy {p['busy_ms']:.1f} ms, compute {p['compute_ms']:.1f} ms, collectives {p['comm_ms']:.1f} ms, "
                  f"exposed collectives {p['exposed_comm_ms']:.1f} ms", "",
                  "| op | ms | calls | collective |", "|---|---:|---:|---|"]
        lines += [f"| `{t['name'][:90]}` | {t['ms']:.2f} | {t['calls']} | {'yes' if t['comm'] else ''} |"
                  for t in p["top"][:15]]
    return "\n".join(lines) + "\n"
