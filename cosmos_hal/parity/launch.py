"""Running one experiment on several backends, one after the other, for a comparison
(the train.sh contract: ``--EXP= --backend= output_dir= max_iter=`` plus overrides)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from cosmos_hal.parity.logs import ParityInputError


def split_overrides(items: list[str], backends: list[str]) -> dict[str, list[str]]:
    """key=value overrides per backend; ``<backend>:key=value`` applies to that one only."""
    per: dict[str, list[str]] = {b: [] for b in backends}
    for item in items:
        head, sep, rest = item.partition(":")
        if sep and head in per and "=" in rest and "=" not in head:
            per[head].append(rest)
            continue
        if "=" not in item:
            raise ParityInputError(f"override {item!r} is not key=value (or <backend>:key=value)")
        for b in backends:
            per[b].append(item)
    return per


def train_command(train_cmd: list[str], exp: str, backend: str, out_dir: str, steps: int, parity: bool,
                  overrides: list[str]) -> list[str]:
    """The launcher command line of one backend's run (the train.sh contract)."""
    cmd = list(train_cmd) + [f"--EXP={exp}", f"--backend={backend}", f"output_dir={out_dir}", f"max_iter={steps}"]
    if parity:
        cmd.append("parity=true")
    return cmd + list(overrides)


def run_backends(exp: str, backends: list[str], steps: int, train_cmd: list[str], out_root: str = "output/parity",
                 parity: bool = False, overrides: list[str] | None = None, env: list[str] | None = None,
                 overwrite: bool = False, cwd: str | None = None, echo=None) -> list[str]:
    """Run ``exp`` once per backend into <out_root>/<exp>/<backend>; return the run folders.

    Runs go one after the other (they may share one accelerator). A backend named twice gets
    folders <backend> and <backend>-2: a run-to-run determinism check on one device.
    """
    if len(backends) < 2:
        raise ParityInputError(f"--backends needs two or more names to compare, got {backends}")
    per = split_overrides(overrides or [], list(dict.fromkeys(backends)))
    per_env = split_overrides(env or [], list(dict.fromkeys(backends)))
    echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    dirs, seen = [], {}
    for backend in backends:
        seen[backend] = seen.get(backend, 0) + 1
        name = backend if seen[backend] == 1 else f"{backend}-{seen[backend]}"
        out_dir = os.path.join(out_root, exp, name)
        if os.path.exists(out_dir) and os.listdir(out_dir):
            if not overwrite:
                raise ParityInputError(f"{out_dir} already holds a run; pass --overwrite to replace it, "
                                       f"or compare it as it is: loss_parity.py {out_dir} <other>")
            shutil.rmtree(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        cmd = train_command(train_cmd, exp, backend, out_dir, steps, parity, per[backend])
        child_env = dict(os.environ)
        for kv in per_env[backend]:
            k, _, v = kv.partition("=")
            child_env[k] = v
        log_path = os.path.join(out_dir, "train.log")
        echo(f"[loss_parity] {name}: {shlex.join(cmd)}  (log: {log_path})")
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(cmd, cwd=cwd, env=child_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace")
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                echo(f"[{name}] {line.rstrip()}")
            rc = proc.wait()
        if rc != 0:
            raise ParityInputError(f"the {name} run failed (exit {rc}): {shlex.join(cmd)}\n"
                                   f"last lines of {log_path}:\n{_tail(log_path)}")
        if not os.path.isfile(os.path.join(out_dir, "metrics.jsonl")):
            raise ParityInputError(f"the {name} run finished but wrote no {out_dir}/metrics.jsonl; "
                                   f"see {log_path}:\n{_tail(log_path)}")
        dirs.append(out_dir)
    return dirs


def _tail(path: str, n: int = 15) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return "".join("    " + line for line in fh.readlines()[-n:]).rstrip()
