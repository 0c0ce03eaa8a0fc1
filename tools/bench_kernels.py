#!/usr/bin/env python
"""Attention kernels at Cosmos-Predict2 shapes: forward+backward TFLOP/s per implementation,
against a bf16 matmul ceiling (8192^3) measured in the same run.

Shapes (batch 1, 16 heads of 128, bf16, BSND as the Cosmos processor calls it):
  self31k   31104 tokens self-attention   (93 frames at 432x768: 24 x 27 x 48 latent tokens)
  self84k   84480 tokens self-attention   (93 frames at 704x1280: 24 x 44 x 80)
  cross31k  31104 queries to 512 text tokens (cross-attention)

FLOPs: forward 4*B*N*Sq*Sk*D, backward 2.5x forward (the usual FlashAttention count), so
fwd+bwd = 3.5x forward. Each timing is the median of --repeats runs after --warmup runs.
Every attention implementation the backend offers is measured; torch SDPA is split into its
cuDNN, flash and memory-efficient kernels on a GPU (COSMOS_HAL_SDPA_BACKEND pins each).

  python tools/bench_kernels.py --out bench_kernels.json           # on a GPU or NPU
  python tools/bench_kernels.py --tiny --out /tmp/k.json           # CPU smoke test (tiny shapes)

Prints a markdown table (paste into docs/benchmarks.md) and writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

from cosmos_hal import registry
from cosmos_hal.attention import ENV_SDPA_BACKEND, attention
from cosmos_hal.backend import current_with_reason

# name: (batch, q tokens, kv tokens, heads, head dim)
SHAPES = {
    "self31k": (1, 31104, 31104, 16, 128),
    "self84k": (1, 84480, 84480, 16, 128),
    "cross31k": (1, 31104, 512, 16, 128),
}
TINY_SHAPES = {
    "self_tiny": (1, 257, 257, 2, 64),
    "cross_tiny": (1, 257, 64, 2, 64),
}
MATH_MAX_SCORES_GB = 8.0  # the math kernel materialises B*N*Sq*Sk float32 scores


def attention_flops(b: int, sq: int, sk: int, n: int, d: int) -> float:
    """fwd+bwd FLOPs: forward 2 matmuls of 2*Sq*Sk*D each per head, backward 2.5x that."""
    return 3.5 * 4.0 * b * n * sq * sk * d


def timed(fn, backend, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` for each of ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    backend.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        backend.synchronize()
        times.append(time.perf_counter() - start)
    return times


def matmul_ceiling(backend, device, n: int, warmup: int, repeats: int) -> dict:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = timed(lambda: a @ b, backend, warmup, repeats)
    median = statistics.median(times)
    return {"n": n, "median_s": median, "tflops": 2.0 * n ** 3 / median / 1e12}


def implementations(backend) -> list[tuple[str, str, str | None]]:
    """(label, kernel name, SDPA sub-backend) for every attention kernel the backend offers;
    torch SDPA once per kernel of its own the device has (Backend.sdpa_variants)."""
    rows = []
    for name in registry.available("attention", backend.name):
        if name == "sdpa" and backend.sdpa_variants():
            rows += [(f"sdpa[{sub}]", "sdpa", sub) for sub in backend.sdpa_variants()]
        else:
            rows.append((name, name, None))
    return rows


def bench_one(kernel: str, sub: str | None, shape, device, backend, warmup: int, repeats: int) -> dict:
    b, sq, sk, n, d = shape
    if kernel == "math":
        scores_gb = b * n * sq * sk * 4 / 2**30
        if scores_gb > MATH_MAX_SCORES_GB:
            return {"skipped": f"math would materialise {scores_gb:.0f} GB of scores"}
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = ((torch.randn(b, s, n, d, generator=gen) * 0.5).to(device, torch.bfloat16).requires_grad_()
               for s in (sq, sk, sk))
    grad_out = torch.randn(b, sq, n, d, generator=gen).to(device, torch.bfloat16)
    saved = os.environ.get(ENV_SDPA_BACKEND)
    if sub:
        os.environ[ENV_SDPA_BACKEND] = sub

    def step():
        for t in (q, k, v):
            t.grad = None
        attention(q, k, v, layout="BSND", impl=kernel).backward(grad_out)

    try:
        times = timed(step, backend, warmup, repeats)
    except (RuntimeError, ValueError, registry.KernelUnavailableError) as exc:  # unsupported, OOM
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    finally:
        if sub:
            if saved is None:
                os.environ.pop(ENV_SDPA_BACKEND, None)
            else:
                os.environ[ENV_SDPA_BACKEND] = saved
    median = statistics.median(times)
    return {"median_s": median, "times_s": times, "tflops": attention_flops(*shape) / median / 1e12}


def run(args) -> dict:
    backend, why = current_with_reason()
    if not backend.is_accelerator() and not args.tiny:
        raise SystemExit(f"bench_kernels: no GPU or NPU here (backend {backend.name}: {why}). The Cosmos shapes "
                         "need an accelerator; run with --tiny for a quick CPU smoke test.")
    backend.set_device(0)
    device = backend.device(0)
    shapes = TINY_SHAPES if args.tiny else {k: SHAPES[k] for k in args.shapes}
    report = {
        "device": (backend.device_names() or [platform.processor() or platform.machine()])[0],
        "backend": backend.name,
        "versions": backend.versions(),
        "tiny": bool(args.tiny),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "flops_convention": "fwd+bwd = 3.5 x 4*B*N*Sq*Sk*D",
        "ceiling": matmul_ceiling(backend, device, 512 if args.tiny else 8192, args.warmup, args.repeats),
        "rows": [],
    }
    impls = implementations(backend)
    if args.impls:
        impls = [row for row in impls if row[0] in args.impls or row[1] in args.impls]
    todo = [(label, kernel, sub, name, shape) for name, shape in shapes.items() for label, kernel, sub in impls]
    try:
        from tqdm import tqdm

        todo_iter = tqdm(todo, desc="attention fwd+bwd", file=sys.stderr)
    except ImportError:
        todo_iter = todo
    for label, kernel, sub, name, shape in todo_iter:
        result = bench_one(kernel, sub, shape, device, backend, args.warmup, args.repeats)
        backend.empty_cache()  # the run's tensors died with bench_one; give the cache back between runs
        if "tflops" in result:
            result["fraction_of_ceiling"] = result["tflops"] / report["ceiling"]["tflops"]
        b, sq, sk, n, d = shape
        report["rows"].append({"impl": label, "shape": name, "batch": b, "q_tokens": sq, "kv_tokens": sk,
                               "heads": n, "head_dim": d, **result})
    return report


def markdown(report: dict) -> str:
    c = report["ceiling"]
    lines = [
        f"Device: {report['device']} ({report['backend']}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ")",
        f"bf16 matmul ceiling ({c['n']}^3): {c['tflops']:.3g} TFLOP/s. Attention bf16, BSND, fwd+bwd, "
        f"median of {report['repeats']} after {report['warmup']} warm-up; {report['flops_convention']}.",
        "",
        "| implementation | shape (B x Sq -> Sk, N x D) | fwd+bwd ms | TFLOP/s | % of matmul |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        shape = f"{r['shape']}: {r['batch']} x {r['q_tokens']} -> {r['kv_tokens']}, {r['heads']} x {r['head_dim']}"
        if "tflops" in r:
            lines.append(f"| {r['impl']} | {shape} | {r['median_s'] * 1e3:.1f} | {r['tflops']:.3g} | "
                         f"{100 * r['fraction_of_ceiling']:.0f} % |")
        else:
            lines.append(f"| {r['impl']} | {shape} | - | - | {r.get('skipped') or r.get('error')} |")
    return "\n".join(lines)


def write_json_atomic(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes that run on a CPU in seconds (smoke test)")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES),
                        help="which Cosmos shapes to measure (default: all)")
    parser.add_argument("--impls", nargs="+", default=None,
                        help="only these implementations, e.g. sdpa[cudnn] flash_attn npu_fusion (default: all)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (default 5)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    report = run(args)
    print(markdown(report))
    if args.out:
        write_json_atomic(args.out, report)
        print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
