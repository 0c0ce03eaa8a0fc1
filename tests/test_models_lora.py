"""LoRA / DoRA adapters: trainable set, fp32 adapters, diffusers-format save and load."""

import pytest
import torch

from cosmos_hal import rng
from cosmos_hal.models import presets
from cosmos_hal.models.dit import build_transformer
from cosmos_hal.models.vae import build_vae
from cosmos_hal.models.lora import (
    LORA_WEIGHT_NAME,
    add_adapters,
    adapter_state_dict,
    load_adapters,
    save_adapters,
)
from kernel_reference import rel_err as _rel  # ||out-ref||/||ref|| in float64; NaN never passes

RANK, ALPHA = 4, 8.0  # alpha != rank: the scale 2 must survive the file round trip


def _inputs(seed=0):
    k = lambda i: rng.Key(seed, "lora_inputs", index=i)  # noqa: E731
    return (
        rng.normal(k(0), (1, 16, 3, 8, 8)),
        rng.uniform(k(1), (1,)),
        rng.normal(k(2), (1, 512, 64)),
        dict(condition_mask=torch.zeros(1, 1, 3, 8, 8), padding_mask=torch.zeros(1, 1, 8, 8)),
    )


@torch.no_grad()
def _forward(model, seed=0):
    x, t, ctx, kw = _inputs(seed)
    return model(x, t, ctx, **kw).sample


def _base(dtype=torch.float32):
    return build_transformer("tiny", init_seed=11, dtype=dtype)  # with the cosmos_hal processor, as trained


def _randomize_lora_b(model):
    with torch.no_grad():
        for i, (name, p) in enumerate(sorted(model.named_parameters())):
            if "lora_B" in name:
                p.copy_(rng.normal(rng.Key(5, "lora_B", index=i), tuple(p.shape), std=0.05))


@pytest.mark.parametrize("use_dora", [False, True])
def test_only_adapter_params_train_and_stay_fp32(use_dora):
    model = _base(torch.bfloat16)
    n = add_adapters(model, RANK, ALPHA, use_dora=use_dora)
    d, ff = 64, 256
    per_block = 8 * RANK * (d + d) + 2 * RANK * (d + ff)
    if use_dora:
        per_block += 8 * d + ff + d  # one magnitude per output feature
    assert n == 2 * per_block
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name, _ in trainable)
    assert {p.dtype for _, p in trainable} == {torch.float32}
    frozen = {p.dtype for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    targets = {name.split(".lora_")[0].split(".", 2)[-1] for name, _ in trainable}
    assert targets == {
        f"{a}.{m}" for a in ("attn1", "attn2") for m in ("to_q", "to_k", "to_v", "to_out.0")
    } | {"ff.net.0.proj", "ff.net.2"}


def test_fresh_adapter_leaves_output_unchanged_and_gets_gradients():
    model = _base()
    ref = _forward(model)
    add_adapters(model, RANK, ALPHA)
    assert torch.equal(_forward(model), ref)
    x, t, ctx, kw = _inputs()
    model(x, t, ctx, **kw).sample.square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("use_dora", [False, True])
def test_saved_adapters_load_into_fresh_model_with_diffusers_api(tmp_path, use_dora):
    trained = _base()
    base_out = _forward(trained)
    add_adapters(trained, RANK, ALPHA, use_dora=use_dora)
    _randomize_lora_b(trained)
    want = _forward(trained)
    assert _rel(want, base_out) > 1e-3
    path = save_adapters(trained, tmp_path / "lora")
    assert path == tmp_path / "lora" / LORA_WEIGHT_NAME and path.is_file()
    assert not list((tmp_path / "lora").glob(".lora-tmp-*"))

    fresh = _base()
    fresh.load_lora_adapter(str(path), prefix="transformer")  # diffusers' own API (ignores the metadata)
    assert _rel(_forward(fresh), want) < 1e-5

    # The Predict2.5 pipeline (the Cosmos pipeline with a LoRA loader mixin) accepts the same file.
    from diffusers import Cosmos2_5_PredictBasePipeline, UniPCMultistepScheduler

    pipe = Cosmos2_5_PredictBasePipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=_base(),
        vae=build_vae("tiny"),
        scheduler=UniPCMultistepScheduler(),
        safety_checker=lambda *args, **kwargs: None,
    )
    pipe.load_lora_weights(str(tmp_path / "lora"))
    assert _rel(_forward(pipe.transformer), want) < 1e-5

    mine = load_adapters(_base(), tmp_path / "lora")
    assert _rel(_forward(mine), want) < 1e-5
    assert adapter_state_dict(mine).keys() == adapter_state_dict(trained).keys()


def test_fused_weights_equal_float64_reference(tmp_path):
    trained = _base()
    add_adapters(trained, RANK, ALPHA)
    _randomize_lora_b(trained)
    save_adapters(trained, tmp_path)
    layer = trained.transformer_blocks[1].attn2.to_k
    w = layer.base_layer.weight.double()
    a = layer.lora_A["default"].weight.double()
    b = layer.lora_B["default"].weight.double()
    for scale in (1.0, 0.5):
        fused = load_adapters(_base(), tmp_path, scale=scale, fuse=True)
        assert not any("lora" in n for n, _ in fused.named_parameters())
        got = fused.transformer_blocks[1].attn2.to_k.weight
        assert _rel(got, w + scale * (ALPHA / RANK) * b @ a) < 1e-6
    unfused = load_adapters(_base(), tmp_path, scale=0.5)
    assert _rel(_forward(unfused), _forward(fused)) < 1e-5


def test_load_adapters_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=LORA_WEIGHT_NAME):
        load_adapters(_base(), tmp_path)
    from safetensors.torch import save_file

    key = "lora_unet_transformer_blocks_0_attn1_to_q.lora_down.weight"  # kohya layout
    save_file({key: torch.zeros(4, 64)}, str(tmp_path / LORA_WEIGHT_NAME))
    with pytest.raises(ValueError, match="cannot load") as info:
        load_adapters(_base(), tmp_path)
    assert key in str(info.value) and str(tmp_path) in str(info.value) and "lokr_w1" in str(info.value)
    with pytest.raises(ValueError, match="rank"):
        add_adapters(_base(), 0)


def test_tiny_preset_is_the_one_lora_tests_use():
    assert presets.get_preset("tiny").hidden_size == 64


def test_lora_init_is_seeded_and_leaves_torch_rng_alone():
    state = torch.get_rng_state()
    a, b = _base(), _base()
    add_adapters(a, RANK, ALPHA, seed=1)
    add_adapters(b, RANK, ALPHA, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    sa, sb = adapter_state_dict(a), adapter_state_dict(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    lora_a = sa["transformer_blocks.0.attn1.to_q.lora_A.weight"]
    bound = 64 ** -0.5  # peft's kaiming-uniform at fan_in 64: U(-1/8, 1/8)
    assert lora_a.abs().max() <= bound and 0.8 * bound / 3**0.5 < lora_a.std() < 1.2 * bound / 3**0.5
    c = _base()
    add_adapters(c, RANK, ALPHA, seed=2)
    assert not torch.equal(adapter_state_dict(c)["transformer_blocks.0.attn1.to_q.lora_A.weight"], lora_a)


@pytest.mark.slow
def test_predict2_2b_lora_r32_has_280_layers_and_45_9m_params():
    from peft.tuners.lora import LoraLayer

    model = build_transformer("predict2-2b", meta=True, dtype=torch.bfloat16)
    n = add_adapters(model, 32, 32)
    assert sum(isinstance(m, LoraLayer) for m in model.modules()) == 280
    assert n == 45_875_200  # 28 x (attn1 4x32x4096 + attn2 2x32x4096 + 2x32x3072 + ff 2x32x10240)


def test_trainer_spellings_apply_lora_and_save_lora_weights(tmp_path):
    from cosmos_hal.models import lora

    a, b = _base(), _base()
    n_a = lora.apply_lora(a, rank=RANK, alpha=ALPHA, target_modules=["to_q", "to_v"], use_dora=True)
    n_b = add_adapters(b, RANK, ALPHA, targets=("to_q", "to_v"), use_dora=True)
    assert n_a == n_b == 2 * 2 * 2 * (RANK * (64 + 64) + 64)  # blocks x attns x {to_q,to_v} x (A, B, magnitude)
    assert lora.save_lora_weights(a, tmp_path) == tmp_path / LORA_WEIGHT_NAME


# --- initialisation: peft's distribution, drawn from cosmos_hal.rng (issue 14, point 2) ---

def _wide():
    """One block 512 wide (ff 2048, text 256): enough elements per layer that a std is known to ~1 %."""
    import dataclasses

    preset = dataclasses.replace(presets.get_preset("tiny"), num_attention_heads=8, attention_head_dim=64,
                                 num_layers=1, text_embed_dim=256)
    return build_transformer(preset, init_seed=3)


def _stds(model, parts):
    return {n: p.std().item() for n, p in model.named_parameters() if p.requires_grad and any(f".{x}." in n for x in parts)}


@pytest.mark.parametrize("kind,parts", [("lora", ("lora_A",)), ("dora", ("lora_A",)),
                                        ("lokr", ("lokr_w2", "lokr_w2_a", "lokr_w2_b"))])
def test_default_init_std_per_layer_equals_peft_own_init(kind, parts):
    """Our draw (cosmos_hal.rng) against peft's own init of the same layer (torch's generator)."""
    from cosmos_hal.models.lora import adapter_config

    torch.manual_seed(0)
    peft_model = _wide()
    peft_model.add_adapter(adapter_config(kind, 32, 32, factor=4))  # peft initialises, nothing re-drawn
    ours = _wide()
    add_adapters(ours, 32, 32, kind=kind, factor=4, seed=5)
    want, got = _stds(peft_model, parts), _stds(ours, parts)
    assert want.keys() == got.keys() and len(got) >= 10
    fan_ins = {p.shape[1] for n, p in ours.named_parameters() if n in got}
    assert len(fan_ins) >= 3  # layers of different widths (512, 256 for attn2 k/v, 2048 for ff.net.2)
    for name in got:
        assert abs(got[name] / want[name] - 1) < 0.05, (name, got[name], want[name])
    if kind == "lora":  # the old default (gaussian, std 1/r) is not peft's: 13 % to 2.5x off here
        gauss = _wide()
        add_adapters(gauss, 32, 32, init="gaussian", seed=5)
        assert all(abs(s / want[n] - 1) > 0.1 for n, s in _stds(gauss, parts).items())
        assert all(abs(s * 32 - 1) < 0.05 for s in _stds(gauss, parts).values())


@pytest.mark.parametrize("kind", ["lora", "dora", "lokr"])
def test_adapter_init_depends_on_the_seed_only_not_on_torch_generators(kind):
    """Same seed -> bit-identical adapters whatever torch's (device-specific) generators hold."""
    torch.manual_seed(1)
    a = _base()
    add_adapters(a, RANK, ALPHA, kind=kind, factor=4, seed=7)
    torch.manual_seed(2)
    b = _base()
    add_adapters(b, RANK, ALPHA, kind=kind, factor=4, seed=7)
    sa, sb = adapter_state_dict(a), adapter_state_dict(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(t.abs().sum() > 0 for t in sa.values())
    if kind == "dora":  # magnitudes: float64 row norms on the CPU, not the device's fp32 reduction
        w = a.transformer_blocks[0].ff.net[2].base_layer.weight
        assert torch.equal(sa["transformer_blocks.0.ff.net.2.lora_magnitude_vector"],
                           torch.linalg.vector_norm(w.double(), dim=1).float())
    with torch.no_grad():  # and the fresh adapter leaves the output unchanged (DoRA: m / ||W|| = 1 to rounding)
        assert _rel(_forward(a), _forward(_base())) < (1e-6 if kind == "dora" else 1e-12)


def test_adapter_options_are_checked():
    with pytest.raises(ValueError, match="gaussian"):
        add_adapters(_base(), RANK, kind="lokr", init="gaussian")
    with pytest.raises(ValueError, match="kind"):
        add_adapters(_base(), RANK, kind="loha")
    with pytest.raises(ValueError, match="factor"):
        add_adapters(_base(), RANK, kind="lokr", factor=0)


# --- LoKr (issue 14, point 3) ---

def _randomize_lokr_w1(model):
    with torch.no_grad():
        for i, (name, p) in enumerate(sorted(model.named_parameters())):
            if ".lokr_w1" in name:
                p.copy_(rng.normal(rng.Key(6, "lokr_w1", index=i), tuple(p.shape), std=0.05))


def test_lokr_factor_4_shapes_and_fp32():
    model = _base(torch.bfloat16)
    n = add_adapters(model, RANK, ALPHA, kind="lokr", factor=4)
    layer = model.transformer_blocks[0].attn1.to_q  # 64 x 64 = kron(4x4, 16x16), 16x16 as 16x4 @ 4x16
    assert tuple(layer.lokr_w1["default"].shape) == (4, 4)
    assert tuple(layer.lokr_w2_a["default"].shape) == (16, RANK) and tuple(layer.lokr_w2_b["default"].shape) == (RANK, 16)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == n and {p.dtype for p in trainable.values()} == {torch.float32}
    assert all(".lokr_" in name for name in trainable)


def test_lokr_saved_and_loaded_with_diffusers_api_and_fused_equals_float64_reference(tmp_path):
    trained = _base()
    add_adapters(trained, RANK, ALPHA, kind="lokr", factor=4)
    _randomize_lokr_w1(trained)
    want = _forward(trained)
    assert _rel(want, _forward(_base())) > 1e-3
    path = save_adapters(trained, tmp_path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        assert any(k.endswith(".lokr_w1") and k.startswith("transformer.") for k in fh.keys())
    fresh = _base()
    fresh.load_lora_adapter(str(path), prefix="transformer")  # diffusers' own loader
    assert _rel(_forward(fresh), want) < 1e-5
    assert _rel(_forward(load_adapters(_base(), tmp_path)), want) < 1e-5

    layer = trained.transformer_blocks[1].ff.net[2]
    w = layer.base_layer.weight.double()
    w1 = layer.lokr_w1["default"].double()
    w2 = layer.lokr_w2_a["default"].double() @ layer.lokr_w2_b["default"].double()
    fused = load_adapters(_base(), tmp_path, scale=0.5, fuse=True)
    assert not any("lokr" in n for n, _ in fused.named_parameters())
    assert _rel(fused.transformer_blocks[1].ff.net[2].weight, w + 0.5 * (ALPHA / RANK) * torch.kron(w1, w2)) < 1e-6
