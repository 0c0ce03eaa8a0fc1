"""cosmos_hal.patching.runtime: the stand-ins patched upstream code calls, against float64 references
written here from transformer_engine's documented semantics (not from our code)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from cosmos_hal import rng
from cosmos_hal.patching import runtime
from kernel_reference import rel_err  # ||out-ref||/||ref|| in float64; NaN never passes

FP32_TOL = 1e-5


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def test_rmsnorm_matches_float64_and_keeps_parameter_name_weight():
    norm = runtime.RMSNorm(64, eps=1e-6)
    assert list(dict(norm.named_parameters())) == ["weight"]
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 7, 64)
    xd = x.double()
    ref = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight.detach().double()
    assert rel_err(norm(x), ref) < FP32_TOL
    norm.reset_parameters()
    assert torch.equal(norm.weight, torch.ones(64))


@pytest.mark.parametrize("fmt", ["bshd", "sbhd"])
@pytest.mark.parametrize("rot", [32, 16])
def test_apply_rotary_pos_emb_is_transformer_engines_rotate_half(fmt, rot):
    b, s, h, d = 2, 12, 3, 32
    x = torch.randn(b, s, h, d) if fmt == "bshd" else torch.randn(s, b, h, d)
    half = torch.rand(s, rot // 2) * 10
    freqs = torch.cat([half, half], dim=-1).reshape(s, 1, 1, rot)  # angles, as upstream's RoPE module makes them
    out = runtime.apply_rotary_pos_emb(x, freqs, tensor_format=fmt, fused=True)
    xd, fd = x.double(), freqs.double()
    if fmt == "bshd":  # (S, 1, 1, D) broadcasts over sbhd as it is
        fd = fd.reshape(1, s, 1, rot)
    head, tail = xd[..., :rot], xd[..., rot:]
    ref = torch.cat([head * fd.cos() + rotate_half(head) * fd.sin(), tail], dim=-1)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert rel_err(out, ref) < FP32_TOL


def test_rope_rejects_packed_sequences_with_a_clear_error():
    with pytest.raises(NotImplementedError, match="cu_seqlens"):
        runtime.apply_rotary_pos_emb(torch.randn(1, 4, 1, 8), torch.zeros(4, 1, 1, 8), "bshd",
                                     cu_seqlens=torch.tensor([0, 4]))


@pytest.mark.parametrize("fmt", ["bshd", "sbhd"])
def test_dot_product_attention_matches_float64_softmax(fmt):
    attn = runtime.DotProductAttention(4, 16, num_gqa_groups=4, attention_dropout=0, qkv_format=fmt,
                                       attn_mask_type="no_mask")
    b, sq, sk = 2, 10, 7
    shape = (lambda s: (b, s, 4, 16)) if fmt == "bshd" else (lambda s: (s, b, 4, 16))
    q, k, v = torch.randn(shape(sq)), torch.randn(shape(sk)), torch.randn(shape(sk))
    out = attn(q, k, v)
    qd, kd, vd = (t.double() if fmt == "bshd" else t.double().transpose(0, 1) for t in (q, k, v))
    w = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", qd, kd) / math.sqrt(16), dim=-1)
    ref = torch.einsum("bhqk,bkhd->bqhd", w, vd).reshape(b, sq, 64)
    if fmt == "sbhd":
        ref = ref.transpose(0, 1)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < FP32_TOL


def test_dot_product_attention_refuses_context_parallelism_and_masks():
    attn = runtime.DotProductAttention(2, 8, qkv_format="bshd", attn_mask_type="no_mask")
    attn.set_context_parallel_group(None, None, None)  # disabling is fine
    with pytest.raises(NotImplementedError, match="context_parallel_size to 1"):
        attn.set_context_parallel_group(object(), [0, 1], None)
    with pytest.raises(NotImplementedError, match="no_mask"):
        runtime.DotProductAttention(2, 8, qkv_format="bshd", attn_mask_type="causal")


def test_training_noise_is_keyed_by_seed_iteration_rank_and_index_not_by_earlier_draws():
    torch.manual_seed(11)
    owner = SimpleNamespace(_hal_iteration=5)
    first = runtime.training_noise(owner, (2, 3, 4))
    second = runtime.training_noise(owner, (2, 3, 4))  # gradient accumulation: next index
    expect0 = rng.normal(rng.Key(11, "noise", 5, 0, 0), (2, 3, 4))
    expect1 = rng.normal(rng.Key(11, "noise", 5, 0, 1), (2, 3, 4))
    assert torch.equal(first, expect0) and torch.equal(second, expect1)
    assert not torch.equal(first, second)
    torch.manual_seed(11)
    torch.rand(1000)  # extra draws elsewhere (an EMA init, a data augmentation) change nothing
    again = SimpleNamespace(_hal_iteration=5)
    assert torch.equal(runtime.training_noise(again, (2, 3, 4)), first)
    again._hal_iteration = 6
    assert not torch.equal(runtime.training_noise(again, (2, 3, 4)), first)
    assert first.dtype == torch.float32 and first.device == runtime.local_device()


def test_device_answers_come_from_the_backend():
    import cosmos_hal

    b = cosmos_hal.current_backend()
    assert runtime.device_type() == b.device_type
    assert runtime.dist_backend() == b.dist_backend
    assert runtime.local_device() == b.device(runtime.local_rank())
    runtime.synchronize()
    runtime.empty_cache()
    assert runtime.max_memory_allocated() >= 0
