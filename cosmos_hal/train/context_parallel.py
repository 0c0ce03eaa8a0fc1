"""Context parallelism for the Cosmos DiT: each rank of a group of N holds 1/N of the video
tokens through the transformer blocks (Ulysses-style attention).

Why: activations grow with the token count, and predict2-14b at 93x704x1280 (84480 tokens)
does not fit an 80 GB device even with full activation checkpointing (docs/benchmarks.md);
NVIDIA's trainer uses context parallelism for it. Ulysses is the variant that needs nothing
from the attention kernel: before self-attention one all-to-all turns "my tokens, all heads"
into "all tokens, my heads"; the kernel (cuDNN SDPA, npu_fusion_attention, ...) runs on full
sequences of H/N heads; a second all-to-all turns the result back. Cross-attention to the text
needs no communication (queries local, keys replicated).

How it is applied, without touching diffusers' code:

* a forward pre-hook on every transformer block keeps this rank's contiguous chunk of every
  per-token input: the hidden states (block 0 receives all tokens), the per-token timestep
  embeddings, the RoPE cos/sin, the extra positional embedding;
* the self-attention processors (FastCosmosAttnProcessor) get the group and do the two
  all-to-alls around their kernel;
* a forward hook on the last block gathers the tokens again, so the output head, the loss and
  everything after are computed on the full sample, identically on every rank of the group.

Gradients: the gather's backward hands each rank N x its own slice of the (identical) output
gradient, with no communication. Summed over the group that is N x the single-device gradient,
which is what the data-parallel average over all ranks (DDP's all-reduce, FSDP's
reduce-scatter, both divide by the world size) expects: the ranks of one group count as N
copies of one sample's gradient. Ranks of a group must read the same sample and draw the same
noise (the trainer keys data and draws by the data-parallel rank).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class ContextParallel:
    """This rank's place in its context-parallel group (consecutive ranks form a group)."""

    size: int
    rank: int  # position inside the group
    group: object = None  # a torch.distributed ProcessGroup (None: the default group)

    def chunk(self, n_tokens: int) -> tuple[int, int]:
        per = n_tokens // self.size
        return self.rank * per, per


def make_groups(world_size: int, rank: int, size: int) -> ContextParallel:
    """Create the groups (every rank must call this, in the same order) and return this rank's.

    Ranks [0..size-1] form group 0, [size..2*size-1] group 1, ...: consecutive ranks share a
    node, where the all-to-alls are cheapest."""
    if size < 1 or world_size % size:
        raise ValueError(f"context_parallel={size}: must divide the number of processes ({world_size}); "
                         f"use 1 (off) or a divisor such as {', '.join(str(d) for d in _divisors(world_size))}")
    mine = None
    for start in range(0, world_size, size):
        ranks = list(range(start, start + size))
        group = tdist.new_group(ranks) if size > 1 and tdist.is_initialized() else None
        if rank in ranks:
            mine = ContextParallel(size=size, rank=rank - start, group=group)
    return mine


def data_parallel(world_size: int, rank: int, size: int) -> tuple[int, int]:
    """(data-parallel rank, data-parallel world size): the ranks of one group share a sample."""
    return rank // size, world_size // size


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# -- collectives with autograd -----------------------------------------------------------------


def _all_to_all(x: torch.Tensor, cp: ContextParallel, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Split ``x`` into N chunks along ``scatter_dim``, send chunk j to group rank j, and
    concatenate what arrives along ``gather_dim`` (in group rank order)."""
    chunks = [c.contiguous() for c in x.chunk(cp.size, dim=scatter_dim)]
    received = [torch.empty_like(chunks[0]) for _ in range(cp.size)]
    tdist.all_to_all(received, chunks, group=cp.group)
    return torch.cat(received, dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    """``_all_to_all`` with autograd: its backward is the inverse all-to-all (dims swapped)."""

    @staticmethod
    def forward(ctx, x, cp, scatter_dim: int, gather_dim: int):
        ctx.cp, ctx.dims = cp, (scatter_dim, gather_dim)
        return _all_to_all(x, cp, scatter_dim=scatter_dim, gather_dim=gather_dim)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, ctx.cp, scatter_dim=gather_dim, gather_dim=scatter_dim), None, None, None


class _GatherTokens(torch.autograd.Function):
    """[B, S/N, C] on each rank -> [B, S, C] on every rank. Backward: N x this rank's slice (see
    the module docstring: the downstream computation is identical on every rank of the group)."""

    @staticmethod
    def forward(ctx, x, cp):
        ctx.cp = cp
        parts = [torch.empty_like(x) for _ in range(cp.size)]
        tdist.all_gather(parts, x.contiguous(), group=cp.group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        cp = ctx.cp
        start, per = cp.chunk(grad.shape[1])
        return grad.narrow(1, start, per) * cp.size, None


def seq_to_heads(x: torch.Tensor, cp: ContextParallel) -> torch.Tensor:
    """[B, S/N, H, D] -> [B, S, H/N, D]: my tokens, all heads -> all tokens, my heads."""
    return _AllToAll.apply(x, cp, 2, 1)


def heads_to_seq(x: torch.Tensor, cp: ContextParallel) -> torch.Tensor:
    """[B, S, H/N, D] -> [B, S/N, H, D]: the inverse of ``seq_to_heads``."""
    return _AllToAll.apply(x, cp, 1, 2)


def gather_tokens(x: torch.Tensor, cp: ContextParallel) -> torch.Tensor:
    return _GatherTokens.apply(x, cp)


# -- applying it to a model ------------------------------------------------------------------


def _local(x, cp: ContextParallel, n_tokens: int, dim: int):
    if isinstance(x, torch.Tensor) and x.dim() > dim and x.shape[dim] == n_tokens:
        start, per = cp.chunk(n_tokens)
        return x.narrow(dim, start, per)
    return x


def _shard_block_inputs(cp: ContextParallel, module, args, kwargs):
    """Pre-hook: this rank's tokens of every per-token block input (diffusers' positional order:
    hidden_states, encoder_hidden_states, embedded_timestep, temb, image_rotary_emb,
    extra_pos_emb, attention_mask, controlnet_residual)."""
    names = ("hidden_states", "encoder_hidden_states", "embedded_timestep", "temb", "image_rotary_emb",
             "extra_pos_emb", "attention_mask", "controlnet_residual")
    values = dict(zip(names, args))
    values.update(kwargs)
    rope = values.get("image_rotary_emb")
    if rope is None:
        raise ValueError("context parallelism needs the rotary embedding (image_rotary_emb) to know the token count")
    n = int(rope[0].shape[0])
    if n % cp.size:
        raise ValueError(f"context_parallel={cp.size}: {n} video tokens do not split evenly; choose a size that "
                         f"divides {n}")
    for key in ("hidden_states", "embedded_timestep", "temb", "extra_pos_emb", "controlnet_residual"):
        if key in values:
            values[key] = _local(values[key], cp, n, dim=1)
    values["image_rotary_emb"] = tuple(_local(t, cp, n, dim=0) for t in rope)
    n_pos = min(len(args), len(names))
    new_args = tuple(values.pop(k) for k in names[:n_pos])
    return new_args, values


def _gather_block_output(cp: ContextParallel, module, args, output):
    return gather_tokens(output, cp)


def apply_context_parallel(model, cp: ContextParallel) -> int:
    """Install context parallelism on a Cosmos DiT; returns the number of self-attention
    processors that now split their heads. Needs FastCosmosAttnProcessor (fast_attention=true)
    and a head count that the group size divides."""
    from functools import partial

    from cosmos_hal.train.fast_attention import FastCosmosAttnProcessor

    if cp.size == 1:
        return 0
    blocks = list(model.transformer_blocks)
    n = 0
    for block in blocks:
        proc = getattr(block.attn1, "processor", None)
        if not isinstance(proc, FastCosmosAttnProcessor):
            raise ValueError("context_parallel > 1 needs fast_attention=true (the fast processor does the "
                             "all-to-alls around the attention kernel)")
        if block.attn1.heads % cp.size:
            raise ValueError(f"context_parallel={cp.size}: the model's {block.attn1.heads} attention heads do not "
                             f"split evenly; choose a size that divides {block.attn1.heads}")
        proc.context_parallel = cp
        block.register_forward_pre_hook(partial(_shard_block_inputs, cp), with_kwargs=True)
        n += 1
    blocks[-1].register_forward_hook(partial(_gather_block_output, cp))
    return n
