"""torch.compile of the DiT's transformer blocks, and the one call that makes a model fast.

Why per block: the 28 blocks share one code object, so dynamo compiles one graph (per AC mode
and shape) and reuses it; compile time stays well under a minute. Inside a block the compiler
fuses what eager runs as dozens of memory-bound kernels (AdaLN modulation, QK-norm + RoPE,
gated residuals, GELU, casts); the matmuls and the attention stay library kernels. Compile
is applied AFTER ``ac.apply_block_ac``, so the checkpoint (and its selective policy) is
inside the compiled region, which is how the compiler's partitioner can honour the policy.

``make_fast(model, ...)`` is the fast path in one call (processor, AC plan, compile);
``fast_optimizer`` the fused AdamW. The trainer should call them instead of
``parallelize.apply_ac`` / ``apply_compile`` (docs/benchmarks.md, "Training step").
"""

from __future__ import annotations

import logging

import torch

from cosmos_hal.train import ac as _ac

log = logging.getLogger(__name__)


def configure_dynamo(recompile_limit: int = 64) -> None:
    """Room for one graph per (AC mode, shape, LoRA or not) without silently falling back to
    eager, which dynamo does once its per-code recompile limit is hit."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(int(getattr(cfg, name)), recompile_limit))
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * recompile_limit)


def _inputs_need_grad(model) -> bool:
    """Whether anything before the blocks is trained (else block 0's input has no grad)."""
    blocks = {id(p) for b in _ac.transformer_blocks(model) for p in b.parameters()}
    after = {id(p) for name in ("norm_out", "proj_out") for p in getattr(model, name, torch.nn.Identity()).parameters()}
    return any(p.requires_grad for p in model.parameters() if id(p) not in blocks and id(p) not in after)


ENV_COMPILE_BACKEND = "COSMOS_HAL_COMPILE_BACKEND"


def compile_blocks(model, *, backend: str | None = None, mode: str | None = None, dynamic: bool | None = False) -> int:
    """``block.compile()`` for every transformer block; returns how many were compiled.

    ``backend``: torch.compile's backend; default ``$COSMOS_HAL_COMPILE_BACKEND``, else
    "inductor" ("aot_eager" traces and partitions without code generation: tests, debugging).

    With nothing trainable before the blocks (LoRA), block 0's input needs no grad while the
    others' do, which would cost a whole second compile for one block: block 0 stays eager."""
    import os

    backend = backend or os.environ.get(ENV_COMPILE_BACKEND, "").strip() or "inductor"
    configure_dynamo()
    blocks = _ac.transformer_blocks(model)
    if not _inputs_need_grad(model):
        blocks = blocks[1:]
    for block in blocks:
        block.compile(backend=backend, mode=mode, dynamic=dynamic)
    return len(blocks)


def uncompile_blocks(model) -> None:
    for block in _ac.transformer_blocks(model):
        block._compiled_call_impl = None


def reset_compiler() -> None:
    """Drop every compiled graph (between benchmark settings: frees memory, avoids limits)."""
    torch._dynamo.reset()


def make_fast(model, *, ac_modes="selective", compile: bool = True, compile_backend: str = "inductor",
              device=None, compute_dtype=torch.bfloat16) -> dict:
    """Turn a built (and LoRA-adapted, if any) Cosmos DiT into the training fast path.

    1. FastCosmosAttnProcessor (fused QK-norm + RoPE, kernel resolved once: cuDNN SDPA on H100);
    2. per-block activation checkpointing ``ac_modes`` (a mode or a list; see ac.plan_modes);
    3. torch.compile of each block when ``compile``.
    Returns a description of what was applied."""
    from cosmos_hal.train.fast_attention import install_fast_processor

    n_proc = install_fast_processor(model, device=device, dtype=compute_dtype)
    modes = _ac.apply_block_ac(model, ac_modes)
    n_compiled = compile_blocks(model, backend=compile_backend) if compile else 0
    proc = next((m.processor for m in model.modules() if hasattr(m, "set_processor")), None)
    return {
        "processors": n_proc,
        "attention_kernel": getattr(proc, "kernel_name", None),
        "sdpa_backends": [str(b).split(".")[-1] for b in (getattr(proc, "sdpa_backends", None) or [])],
        "ac_modes": modes,
        "ac_counts": {m: modes.count(m) for m in _ac.MODES},
        "compiled_blocks": n_compiled,
        "compile_backend": compile_backend if compile else None,
    }


def fast_optimizer(params, *, lr: float = 2**-14.5, betas=(0.9, 0.99), eps: float = 1e-8,
                   weight_decay: float = 0.1) -> torch.optim.Optimizer:
    """The backend's fused AdamW (torch fused on NVIDIA GPUs, NpuFusedAdamW on Ascend)."""
    from cosmos_hal import ops

    return ops.fused_adamw(list(params), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
