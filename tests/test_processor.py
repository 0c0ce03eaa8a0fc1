"""CosmosHalAttnProcessor: a Cosmos DiT gives diffusers' own answer through cosmos_hal's kernels."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from diffusers import CosmosTransformer3DModel  # imported before any test puts the emulator on the path

from cosmos_hal.models.processor import CosmosHalAttnProcessor, install_processor
from conftest import REPO
from kernel_reference import FP32_TOL, rel_err

TEXT_TOKENS = 512


def tiny_cosmos(in_channels: int = 17, seed: int = 0) -> CosmosTransformer3DModel:
    """A Predict2-shaped DiT (concat_padding_mask, no learnable pos-embed, rope (1, 3, 3))
    small enough for a CPU: 2 layers, 2 heads of 16."""
    torch.manual_seed(seed)
    model = CosmosTransformer3DModel(
        in_channels=in_channels, out_channels=16, num_attention_heads=2, attention_head_dim=16,
        num_layers=2, mlp_ratio=2.0, text_embed_dim=24, adaln_lora_dim=8, max_size=(8, 32, 32),
        patch_size=(1, 2, 2), rope_scale=(1.0, 3.0, 3.0), concat_padding_mask=True,
        extra_pos_embed_type=None,
    )
    # Random (not zero-initialised) weights everywhere, so every path carries signal.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def inputs(batch: int = 2, frames: int = 3, height: int = 6, width: int = 10, video2world: bool = True,
           mask: str | None = None, seed: int = 1) -> dict:
    """Fresh random inputs: 3 x 3 x 5 = 45 tokens (odd) cross-attending to 512 text tokens."""
    g = torch.Generator().manual_seed(seed)
    kw = dict(
        hidden_states=torch.randn(batch, 16, frames, height, width, generator=g),
        timestep=torch.rand(batch, generator=g),
        encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, 24, generator=g),
        padding_mask=torch.zeros(1, 1, height, width),
        fps=16,
    )
    if video2world:
        cond = torch.zeros(batch, 1, frames, height, width)
        cond[:, :, 0] = 1.0
        kw["condition_mask"] = cond
    if mask is not None:
        keep = torch.arange(TEXT_TOKENS)[None, :] < torch.tensor([[300], [TEXT_TOKENS]])[:batch]
        kw["attention_mask"] = keep if mask == "bool" else torch.where(keep, 0.0, float("-inf"))
    return kw


def forward_backward(model, kw):
    model.zero_grad(set_to_none=True)
    out = model(**kw, return_dict=False)[0]
    g = torch.Generator().manual_seed(7)
    (out * torch.randn(out.shape, generator=g).to(out.device)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


def assert_same(model_ref, model_hal, kw):
    out_ref, grads_ref = forward_backward(model_ref, kw)
    out_hal, grads_hal = forward_backward(model_hal, kw)
    assert rel_err(out_hal, out_ref) < FP32_TOL, rel_err(out_hal, out_ref)
    assert grads_ref.keys() == grads_hal.keys()
    worst = max(grads_ref, key=lambda n: rel_err(grads_hal[n], grads_ref[n]))
    assert rel_err(grads_hal[worst], grads_ref[worst]) < FP32_TOL, (worst, rel_err(grads_hal[worst], grads_ref[worst]))


def test_install_processor_replaces_every_cosmos_attention_once():
    model = tiny_cosmos()
    assert install_processor(model) == 4  # 2 blocks x (self, cross)
    assert all(isinstance(b.attn1.processor, CosmosHalAttnProcessor) and
               isinstance(b.attn2.processor, CosmosHalAttnProcessor) for b in model.transformer_blocks)
    assert install_processor(model) == 0


@pytest.mark.parametrize("video2world", [True, False], ids=["video2world_in17", "text2image_in16"])
def test_processor_matches_diffusers_forward_and_backward(video2world):
    reference = tiny_cosmos(in_channels=17 if video2world else 16)
    ours = copy.deepcopy(reference)
    install_processor(ours)
    assert_same(reference, ours, inputs(video2world=video2world, frames=3 if video2world else 1))


@pytest.mark.parametrize("mask", ["bool", "additive"])
def test_processor_matches_diffusers_with_text_mask(mask):
    reference = tiny_cosmos()
    ours = copy.deepcopy(reference)
    install_processor(ours)
    assert_same(reference, ours, inputs(mask=mask, seed=3))


def test_text_mask_changes_the_output():
    """Guards the mask tests above: padding text tokens must matter."""
    model = tiny_cosmos()
    install_processor(model)
    with torch.no_grad():
        masked = model(**inputs(mask="bool"), return_dict=False)[0]
        plain = model(**inputs(), return_dict=False)[0]
    assert rel_err(masked, plain) > 1e-3


@pytest.mark.parametrize("mask", [None, "bool", "additive"])
def test_processor_on_emulated_npu_matches_diffusers(mask, npu_emulator):
    """With torch_npu (emulated) the model runs npu_fusion_attention, npu_rms_norm and
    npu_rotary_mul, and still gives diffusers' answer."""
    reference = tiny_cosmos()
    ours = copy.deepcopy(reference)
    install_processor(ours)
    kw = inputs(mask=mask, seed=5)
    before = dict(npu_emulator.CALLS)
    assert_same(reference, ours, kw)
    used = {op: npu_emulator.CALLS[op] - before.get(op, 0) for op in
            ("npu_fusion_attention", "npu_rms_norm", "npu_rotary_mul")}
    # one forward of 2 blocks: 4 attentions, 8 QK norms, 4 rope calls (self-attention q and k)
    assert used == {"npu_fusion_attention": 4, "npu_rms_norm": 8, "npu_rotary_mul": 4}, used


def test_image_context_tuple_is_refused_with_a_clear_error():
    model = tiny_cosmos()
    install_processor(model)
    attn = model.transformer_blocks[0].attn2
    x = torch.randn(1, 5, 32)
    with pytest.raises(TypeError, match="image-context"):
        attn.processor(attn, x, encoder_hidden_states=(torch.randn(1, 7, 24), torch.randn(1, 3, 24)))


COMPILE_CHECK = """
import torch
from test_processor import tiny_cosmos
from cosmos_hal.models.processor import install_processor
from kernel_reference import rel_err
model = tiny_cosmos()
install_processor(model)
attn = model.transformer_blocks[0].attn1
g = torch.Generator().manual_seed(9)
x = torch.randn(2, 45, 32, generator=g)
cos, sin = torch.randn(45, 16, generator=g), torch.randn(45, 16, generator=g)
compiled = torch.compile(attn, fullgraph=True, backend="eager")
err = rel_err(compiled(x, image_rotary_emb=(cos, sin)), attn(x, image_rotary_emb=(cos, sin)))
assert err < 1e-6, err
print("compiled in one graph")
"""


def test_installed_attention_compiles_without_graph_breaks():
    """install_processor chooses kernels eagerly, so torch.compile(fullgraph=True) traces the
    whole attention module (QK norm, RoPE, attention dispatch) in one graph. In a fresh
    process: once the torch_npu emulator has been imported, torch.compile cannot run."""
    proc = subprocess.run([sys.executable, "-c", COMPILE_CHECK], cwd=os.path.join(REPO, "tests"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "compiled in one graph" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.cuda
@pytest.mark.parametrize("mask", [None, "bool", "additive"])
def test_processor_matches_diffusers_on_the_gpu(mask):
    reference = tiny_cosmos().cuda()
    ours = copy.deepcopy(reference)
    install_processor(ours)
    kw = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in inputs(mask=mask, seed=8).items()}
    assert_same(reference, ours, kw)
