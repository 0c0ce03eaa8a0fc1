"""Model presets, the DiT builder and the Wan VAE helpers (tiny presets, CPU)."""

import time

import pytest
import torch

from cosmos_hal import rng
from cosmos_hal.models import presets
from cosmos_hal.models.dit import build_transformer, count_parameters
from cosmos_hal.models.vae import build_vae, decode_latents, encode_video
from kernel_reference import rel_err as _rel  # ||out-ref||/||ref|| in float64; NaN never passes


def tiny_inputs(preset, batch=1, frames=5, size=8, seed=0):
    k = lambda i: rng.Key(seed, "test_inputs", index=i)  # noqa: E731
    x = rng.normal(k(0), (batch, 16, frames, size, size))
    t = rng.uniform(k(1), (batch,))
    ctx = rng.normal(k(2), (batch, 512, preset.context_dim))
    kwargs = dict(padding_mask=torch.zeros(1, 1, size, size))
    if preset.has_condition_mask:
        kwargs["condition_mask"] = torch.zeros(batch, 1, frames, size, size)
    return x, t, ctx, kwargs


def test_unknown_preset_lists_known_names():
    with pytest.raises(KeyError, match="predict2-2b.*tiny"):
        presets.get_preset("predict3-1b")
    with pytest.raises(KeyError, match="tiny.*wan2.1"):
        presets.get_vae_preset("nope")


@pytest.mark.parametrize(
    "name,hidden,layers,in_ch,rope",
    [
        ("predict2-2b", 2048, 28, 17, (1.0, 3.0, 3.0)),
        ("predict2-2b-t2i", 2048, 28, 16, (1.0, 4.0, 4.0)),
        ("predict2-14b", 5120, 36, 17, (20 / 24, 2.0, 2.0)),
        ("predict2-14b-t2i", 5120, 36, 16, (1.0, 4.0, 4.0)),
    ],
)
def test_real_presets_have_upstream_shapes(name, hidden, layers, in_ch, rope):
    p = presets.get_preset(name)
    assert (p.hidden_size, p.num_layers, p.in_channels, p.rope_scale) == (hidden, layers, in_ch, rope)
    assert p.attention_head_dim == 128 and p.text_embed_dim == 1024 and p.concat_padding_mask
    assert p.extra_pos_embed_type is None


def test_predict2_2b_meta_build_has_1_96b_params_and_draws_nothing():
    state = torch.get_rng_state()
    model = build_transformer("predict2-2b", meta=True, install_hal_processor=False)
    assert torch.equal(state, torch.get_rng_state()), "meta build must not draw from torch's generator"
    assert all(p.is_meta for p in model.parameters())
    n = count_parameters(model)
    assert 1.95e9 < n < 1.97e9, n
    assert model.patch_embed.proj.in_features == (17 + 1) * 4  # + padding-mask channel, 2x2 patches


def test_predict25_preset_projects_text_features():
    model = build_transformer("predict2.5-2b", meta=True, install_hal_processor=False)
    assert model.crossattn_proj[0].in_features == 100352
    assert model.transformer_blocks[0].attn2.to_k.in_features == 1024


def test_tiny_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = build_transformer("tiny", init_seed=3)
    b = build_transformer("tiny", init_seed=3)
    c = build_transformer("tiny", init_seed=4)
    assert torch.equal(state, torch.get_rng_state())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["proj_out.weight"], sc["proj_out.weight"])
    w = sa["transformer_blocks.0.attn1.to_q.weight"]
    bound = 1 / w.shape[1] ** 0.5
    assert w.abs().max() <= bound and w.std() > 0.5 * bound / 3**0.5
    assert torch.equal(sa["transformer_blocks.0.attn1.norm_q.weight"], torch.ones(32))


@pytest.mark.parametrize("name", ["tiny", "tiny-t2i", "tiny-2.5"])
def test_tiny_trains_a_step_fast_on_cpu(name):
    torch.set_num_threads(2)
    preset = presets.get_preset(name)
    model = build_transformer(name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, t, ctx, kw = tiny_inputs(preset)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = model(x, t, ctx, **kw).sample
        loss = (out - x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert min(times) < 1.5, times  # ~0.02 s on an idle 2-core CPU; slack for a busy CI host


def test_build_in_bf16_and_meta_dtype():
    m = build_transformer("tiny", dtype=torch.bfloat16, install_hal_processor=False)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    m = build_transformer("tiny", dtype=torch.bfloat16, meta=True, install_hal_processor=False)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}


def test_tiny_vae_encodes_17x64x64_to_5x8x8_with_wan_normalisation():
    vae = build_vae("tiny")
    video = rng.uniform(rng.Key(1, "video"), (1, 3, 17, 64, 64), low=-1, high=1)
    lat = encode_video(vae, video)
    assert lat.shape == (1, 16, 5, 8, 8) and lat.dtype == torch.float32
    with torch.no_grad():
        mu = vae.encode(video).latent_dist.mean.double()
    mean = torch.tensor(presets.WAN21_LATENTS_MEAN, dtype=torch.float64).view(1, 16, 1, 1, 1)
    std = torch.tensor(presets.WAN21_LATENTS_STD, dtype=torch.float64).view(1, 16, 1, 1, 1)
    assert _rel(lat, (mu - mean) / std) < 1e-6


def test_decode_latents_undoes_the_normalisation():
    vae = build_vae("tiny")
    lat = rng.normal(rng.Key(3, "latents"), (1, 16, 2, 4, 4))
    out = decode_latents(vae, lat)
    assert out.shape == (1, 3, 5, 32, 32) and out.min() >= -1 and out.max() <= 1
    mean = torch.tensor(presets.WAN21_LATENTS_MEAN, dtype=torch.float64).view(1, 16, 1, 1, 1)
    std = torch.tensor(presets.WAN21_LATENTS_STD, dtype=torch.float64).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        ref = vae.decode((lat.double() * std + mean).float()).sample.clamp(-1, 1)
    assert _rel(out, ref) < 1e-5


def test_vae_sampling_uses_cosmos_rng_key():
    vae = build_vae("tiny")
    video = rng.uniform(rng.Key(2, "video"), (1, 3, 5, 32, 32), low=-1, high=1)
    a = encode_video(vae, video, sample_key=rng.Key(0, "vae"))
    b = encode_video(vae, video, sample_key=rng.Key(0, "vae"))
    c = encode_video(vae, video)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_vae_from_saved_folder_and_missing_folder(tmp_path):
    vae = build_vae("tiny", init_seed=5)
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    again = build_vae(tmp_path / "pipe")
    sd, sd2 = vae.state_dict(), again.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_vae(tmp_path / "nowhere")


def test_build_installs_the_hal_attention_processor_with_equal_output():
    from cosmos_hal.models.processor import CosmosHalAttnProcessor

    plain = build_transformer("tiny", init_seed=7, install_hal_processor=False)
    hal = build_transformer("tiny", init_seed=7)
    procs = [m.processor for m in hal.modules() if hasattr(m, "set_processor")]
    assert len(procs) == 2 * 2 and all(isinstance(p, CosmosHalAttnProcessor) for p in procs)
    preset = presets.get_preset("tiny")
    x, t, ctx, kw = tiny_inputs(preset, batch=2, seed=4)
    with torch.no_grad():
        ref = plain.double()(x.double(), t.double(), ctx.double(), **{k: v.double() for k, v in kw.items()}).sample
        out = hal(x, t, ctx, **kw).sample
    assert _rel(out, ref) < 1e-5


@pytest.mark.cuda
def test_predict2_2b_random_weights_run_on_the_accelerator():
    import cosmos_hal

    device = cosmos_hal.current_backend().device()
    preset = presets.get_preset("predict2-2b")
    model = build_transformer(preset, dtype=torch.bfloat16, device=device, init="torch")
    assert count_parameters(model) > 1.9e9
    x, t, ctx, kw = tiny_inputs(preset, frames=3, size=16)
    to = lambda v: v.to(device=device, dtype=torch.bfloat16)  # noqa: E731
    with torch.no_grad():
        out = model(to(x), to(t), to(ctx), **{k: to(v) for k, v in kw.items()}).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
