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

* a forward hook on the patch embedding keeps this rank's contiguous chunk of the tokens, so
  every block (block 0 included) gets [B, S/N, C] with the same strides: one compiled graph;
* a forward pre-hook on every transformer block keeps this rank's chunk of the other per-token
  inputs (the per-token timestep embeddings, the RoPE cos/sin, the extra positional
  embedding): views, no copies, cut once per forward and shared by all blocks, in eager mode;
* the self-attention processors (FastCosmosAttnProcessor) get the group and do the two
  all-to-alls around their kernel, q, k and v in one; the collectives are the functional,
  traceable ones, so torch.compile keeps each (checkpointed) block one graph;
* a forward pre-hook on the output norm gathers the tokens again (outside the compiled blocks),
  so the output head, the loss and everything after are computed on the full sample,
  identically on every rank of the group. At 93x704x1280 that is one all-gather of
  42240 x 2048 bf16 per rank (173 MB) and a head of 2048 -> 64 channels: about a millisecond.

Gradients: the gather's backward hands each rank N x its own slice of the (identical) output
gradient, with no communication. Summed over the group that is N x the single-device gradient,
which is what the data-parallel average over all ranks (DDP's all-reduce, FSDP's
reduce-scatter, both divide by the world size) expects: the ranks of one group count as N
copies of one sample's gradient. Ranks of a group must read the same sample and draw the same
noise (the trainer keys data and draws by the data-parallel rank).
"""

from __future__ import annotations

import weakref
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
#
# Functional collectives (torch.distributed._functional_collectives): ops that return a new
# tensor, which dynamo traces into the compiled block's graph (c10d's list-based
# ``all_to_all`` breaks the graph at its ``AllToAllOptions``, and a checkpointed block with a
# graph break inside runs eagerly as a whole). Their autograd is built in: the backward of an
# all-to-all is the inverse all-to-all.


def _group(cp: ContextParallel):
    return cp.group if cp.group is not None else tdist.group.WORLD


def all_to_all(x: torch.Tensor, cp: ContextParallel, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Split ``x`` into N chunks along ``scatter_dim``, send chunk j to group rank j, and
    concatenate what arrives along ``gather_dim`` (in group rank order): one
    ``all_to_all_single`` over a [N, ...] staging copy (dims are non-negative)."""
    from torch.distributed._functional_collectives import all_to_all_single_autograd

    parts = x.unflatten(scatter_dim, (cp.size, -1)).movedim(scatter_dim, 0).contiguous()
    got = all_to_all_single_autograd(parts, None, None, _group(cp))
    return got.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)


class _GatherTokens(torch.autograd.Function):
    """[B, S/N, C] on each rank -> [B, S, C] on every rank. Backward: N x this rank's slice (see
    the module docstring: the downstream computation is identical on every rank of the group)."""

    @staticmethod
    def forward(ctx, x, cp):
        from torch.distributed import _functional_collectives as fc

        ctx.cp = cp
        gather = getattr(fc, "all_gather_single", None) or fc.all_gather_tensor  # the new name (torch 2.14) or the old
        parts = fc.wait_tensor(gather(x.unsqueeze(0).contiguous(), 0, _group(cp)))  # [N, B, S/N, C]
        return parts.movedim(0, 1).flatten(1, 2)

    @staticmethod
    def backward(ctx, grad):
        cp = ctx.cp
        start, per = cp.chunk(grad.shape[1])
        return grad.narrow(1, start, per) * cp.size, None


def seq_to_heads(x: torch.Tensor, cp: ContextParallel) -> torch.Tensor:
    """[B, S/N, H, D] -> [B, S, H/N, D]: my tokens, all heads -> all tokens, my heads."""
    return all_to_all(x, cp, 2, 1)


def qkv_seq_to_heads(q, k, v, cp: ContextParallel):
    """``seq_to_heads`` of q, k and v in ONE all-to-all (a [3, B, S/N, H, D] stack) where their
    shapes agree (every Cosmos DiT): one collective launch and one latency instead of three.
    Grouped-query shapes (fewer k/v heads) fall back to three."""
    if q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype:
        return all_to_all(torch.stack((q, k, v)), cp, 3, 2).unbind(0)
    return tuple(seq_to_heads(t, cp) for t in (q, k, v))


def heads_to_seq(x: torch.Tensor, cp: ContextParallel) -> torch.Tensor:
    """[B, S, H/N, D] -> [B, S/N, H, D]: the inverse of ``seq_to_heads``."""
    return all_to_all(x, cp, 1, 2)


def gather_tokens(x: torch.Tensor, cp: ContextParallel) -> torch.Tensor:
    return _GatherTokens.apply(x, cp)


# -- applying it to a model ------------------------------------------------------------------


class _Shards:
    """This rank's slices of the model-level per-token tensors (timestep embeddings, RoPE tables,
    positional embedding), cut once per forward and handed to every block.

    Why once: the backward of a slice is a zero-filled gradient of the whole tensor (for the
    per-token timestep embedding of the 2B at 93x704x1280, 84480 x 6144 values); sliced in each
    block it would be made and summed 28 times per step, sliced once it is made once. Cleared
    when the tokens are gathered before the head, so nothing outlives the forward."""

    def __init__(self, cp: ContextParallel):
        self.cp = cp
        self._memo: dict = {}

    def local(self, x, n_tokens: int, dim: int):
        if not (isinstance(x, torch.Tensor) and x.dim() > dim and x.shape[dim] == n_tokens):
            return x
        hit = self._memo.get(id(x))
        if hit is not None and hit[0]() is x:
            return hit[1]
        start, per = self.cp.chunk(n_tokens)
        part = x.narrow(dim, start, per)
        self._memo[id(x)] = (weakref.ref(x), part)
        return part

    def clear(self) -> None:
        self._memo.clear()


def _check_tokens(n: int, cp: ContextParallel) -> None:
    if n % cp.size:
        raise ValueError(f"context_parallel={cp.size}: {n} video tokens do not split evenly; choose a size that "
                         f"divides {n}")


def _shard_patches(cp: ContextParallel, module, args, output):
    """Forward hook on the patch embedding ([B, T, H, W, C] out): this rank's tokens, contiguous,
    shaped [B, 1, 1, S/N, C] so that the model's own ``flatten(1, 3)`` gives [B, S/N, C]. So block
    0 gets the same shape and strides as every other block (one compiled graph for all)."""
    tokens = output.flatten(1, 3)
    _check_tokens(tokens.shape[1], cp)
    start, per = cp.chunk(tokens.shape[1])
    return tokens.narrow(1, start, per).contiguous()[:, None, None]


@torch._dynamo.disable
def _shard_block_inputs(shards: _Shards, module, args, kwargs):
    """Pre-hook: this rank's tokens of every per-token block input that still holds all of them
    (diffusers' positional order: hidden_states, encoder_hidden_states, embedded_timestep, temb,
    image_rotary_emb, extra_pos_emb, attention_mask, controlnet_residual). Views only, made once
    per forward (_Shards); eager, outside the block's compiled graph (a few Python calls)."""
    names = ("hidden_states", "encoder_hidden_states", "embedded_timestep", "temb", "image_rotary_emb",
             "extra_pos_emb", "attention_mask", "controlnet_residual")
    values = dict(zip(names, args))
    values.update(kwargs)
    rope = values.get("image_rotary_emb")
    if rope is None:
        raise ValueError("context parallelism needs the rotary embedding (image_rotary_emb) to know the token count")
    n = int(rope[0].shape[0])
    _check_tokens(n, shards.cp)
    for key in ("hidden_states", "embedded_timestep", "temb", "extra_pos_emb", "controlnet_residual"):
        if key in values:
            values[key] = shards.local(values[key], n, dim=1)
    values["image_rotary_emb"] = tuple(shards.local(t, n, dim=0) for t in rope)
    n_pos = min(len(args), len(names))
    new_args = tuple(values.pop(k) for k in names[:n_pos])
    return new_args, values


def _gather_before_head(shards: _Shards, module, args):
    """Pre-hook on the output norm (outside the compiled blocks): all tokens again."""
    shards.clear()
    return (gather_tokens(args[0], shards.cp), *args[1:])


def apply_context_parallel(model, cp: ContextParallel) -> int:
    """Install context parallelism on a Cosmos DiT; returns the number of self-attention
    processors that now split their heads. Needs FastCosmosAttnProcessor (fast_attention=true)
    and a head count that the group size divides."""
    from functools import partial

    from cosmos_hal.train.fast_attention import FastCosmosAttnProcessor

    if cp.size == 1:
        return 0
    blocks = list(model.transformer_blocks)
    shards = _Shards(cp)
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
        block.register_forward_pre_hook(partial(_shard_block_inputs, shards), with_kwargs=True)
        n += 1
    model.patch_embed.register_forward_hook(partial(_shard_patches, cp))
    model.norm_out.register_forward_pre_hook(partial(_gather_before_head, shards))
    return n
