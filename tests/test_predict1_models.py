"""Cosmos-Predict1 (Cosmos 1.0) models on diffusers: presets, the CV8x8x8 VAE, and loading
NVIDIA's cosmos-predict1 checkpoints (#17 point 1).

The reference for every name and value is diffusers' ``scripts/convert_cosmos_to_diffusers.py``
(TRANSFORMER_CONFIGS "Cosmos-1.0-*", TRANSFORMER_KEYS_RENAME_DICT_COSMOS_1_0,
TRANSFORMER_SPECIAL_KEYS_REMAP_COSMOS_1_0), transcribed here by hand, not imported from our code.
"""

from __future__ import annotations

import re

import pytest
import torch

from cosmos_hal.models import presets
from cosmos_hal.models.dit import build_transformer
from cosmos_hal.models.loading import CheckpointMismatchError
from cosmos_hal.models.vae import build_vae, decode_latents, encode_video, normalize_latents

# convert_cosmos_to_diffusers.py TRANSFORMER_CONFIGS, the Cosmos-1.0 entries.
_COMMON = dict(out_channels=16, attention_head_dim=128, mlp_ratio=4.0, text_embed_dim=1024, adaln_lora_dim=256,
               max_size=(128, 240, 240), patch_size=(1, 2, 2), concat_padding_mask=True,
               extra_pos_embed_type="learnable")
SCRIPT_CONFIGS = {
    "predict1-7b-text2world": dict(_COMMON, in_channels=16, num_attention_heads=32, num_layers=28,
                                   rope_scale=(2.0, 1.0, 1.0)),
    "predict1-7b-video2world": dict(_COMMON, in_channels=17, num_attention_heads=32, num_layers=28,
                                    rope_scale=(2.0, 1.0, 1.0)),
    "predict1-14b-text2world": dict(_COMMON, in_channels=16, num_attention_heads=40, num_layers=36,
                                    rope_scale=(2.0, 2.0, 2.0)),
    "predict1-14b-video2world": dict(_COMMON, in_channels=17, num_attention_heads=40, num_layers=36,
                                     rope_scale=(2.0, 2.0, 2.0)),
}

# TRANSFORMER_KEYS_RENAME_DICT_COSMOS_1_0, in the script's order (applied as str.replace after
# stripping "net."), then the special handler renames "blocks.block{i}" to "transformer_blocks.{i}".
SCRIPT_RENAMES = [
    ("t_embedder.1", "time_embed.t_embedder"), ("affline_norm", "time_embed.norm"),
    (".blocks.0.block.attn", ".attn1"), (".blocks.1.block.attn", ".attn2"), (".blocks.2.block", ".ff"),
    (".blocks.0.adaLN_modulation.1", ".norm1.linear_1"), (".blocks.0.adaLN_modulation.2", ".norm1.linear_2"),
    (".blocks.1.adaLN_modulation.1", ".norm2.linear_1"), (".blocks.1.adaLN_modulation.2", ".norm2.linear_2"),
    (".blocks.2.adaLN_modulation.1", ".norm3.linear_1"), (".blocks.2.adaLN_modulation.2", ".norm3.linear_2"),
    ("to_q.0", "to_q"), ("to_q.1", "norm_q"), ("to_k.0", "to_k"), ("to_k.1", "norm_k"), ("to_v.0", "to_v"),
    ("layer1", "net.0.proj"), ("layer2", "net.2"), ("proj.1", "proj"), ("x_embedder", "patch_embed"),
    ("extra_pos_embedder", "learnable_pos_embed"), ("final_layer.adaLN_modulation.1", "norm_out.linear_1"),
    ("final_layer.adaLN_modulation.2", "norm_out.linear_2"), ("final_layer.linear", "proj_out"),
]  # fmt: skip
SCRIPT_REMOVED = ("logvar.0.freqs", "logvar.0.phases", "logvar.1.weight", "pos_embedder.seq")


def script_convert(key: str) -> str | None:
    """What convert_cosmos_to_diffusers.py makes of one upstream key (None: removed)."""
    key = key.removeprefix("net.")
    for old, new in SCRIPT_RENAMES:
        key = key.replace(old, new)
    if any(r in key for r in SCRIPT_REMOVED):
        return None
    m = re.match(r"blocks\.block(\d+)(.*)", key)
    return f"transformer_blocks.{m.group(1)}{m.group(2)}" if m else key


def to_upstream(key: str) -> str:
    """diffusers key -> cosmos-predict1 GeneralDIT key: the script's rules run backwards, by hand."""
    m = re.match(r"transformer_blocks\.(\d+)\.(.*)", key)
    if m:
        i, rest = m.groups()
        attn = re.match(r"attn([12])\.(.*)", rest)
        if attn:
            sub = {"to_q": "to_q.0", "norm_q": "to_q.1", "to_k": "to_k.0", "norm_k": "to_k.1", "to_v": "to_v.0",
                   "to_out.0": "to_out.0"}
            name, param = attn.group(2).rsplit(".", 1)
            return f"blocks.block{i}.blocks.{int(attn.group(1)) - 1}.block.attn.{sub[name]}.{param}"
        norm = re.match(r"norm([123])\.linear_([12])\.(.*)", rest)
        if norm:
            return f"blocks.block{i}.blocks.{int(norm.group(1)) - 1}.adaLN_modulation.{norm.group(2)}.{norm.group(3)}"
        ff = {"ff.net.0.proj.weight": "layer1.weight", "ff.net.2.weight": "layer2.weight"}[rest]
        return f"blocks.block{i}.blocks.2.block.{ff}"
    for new, old in (("patch_embed.proj", "x_embedder.proj.1"), ("time_embed.t_embedder", "t_embedder.1"),
                     ("time_embed.norm", "affline_norm"), ("learnable_pos_embed", "extra_pos_embedder"),
                     ("norm_out.linear_", "final_layer.adaLN_modulation."), ("proj_out", "final_layer.linear")):
        if key.startswith(new):
            return old + key[len(new):]
    raise KeyError(key)


def _tiny(preset="tiny-predict1-video2world", seed=0):
    return build_transformer(preset, install_hal_processor=False, init_seed=seed)


def _upstream_extras(hidden: int) -> dict:
    """Non-weight keys NVIDIA's files carry beside the DiT: logvar head, RoPE table."""
    return {"logvar.0.freqs": torch.randn(128), "logvar.0.phases": torch.randn(128),
            "logvar.1.weight": torch.randn(1, 128), "net.pos_embedder.seq": torch.arange(8.0)}


@pytest.mark.parametrize("name", sorted(SCRIPT_CONFIGS))
def test_predict1_presets_are_the_conversion_scripts_configs(name):
    cfg = presets.get_preset(name).diffusers_config()
    assert cfg == SCRIPT_CONFIGS[name]
    assert presets.get_preset(name).family == "predict1"


def test_short_predict1_names_mean_text2world():
    assert presets.get_preset("predict1-7b") is presets.get_preset("predict1-7b-text2world")
    assert presets.get_preset("predict1-14b") is presets.get_preset("predict1-14b-text2world")
    assert presets.get_preset("predict1-7b").task == "text2world"


def test_tiny_predict1_presets_differ_from_real_ones_only_in_size():
    t2w, v2w = presets.get_preset("tiny-predict1-text2world"), presets.get_preset("tiny-predict1-video2world")
    assert (t2w.in_channels, v2w.in_channels, t2w.task, v2w.task) == (16, 17, "text2world", "video2world")
    assert t2w.extra_pos_embed_type == "learnable" and t2w.rope_scale == (2.0, 1.0, 1.0)
    assert presets.get_preset("tiny").family == "predict2"


def test_inverse_map_round_trips_through_the_scripts_rules():
    keys = _tiny().state_dict().keys()
    assert all(script_convert(to_upstream(k)) == k for k in keys)
    assert all(script_convert(k) is None for k in SCRIPT_REMOVED)


def test_predict1_checkpoint_loads_regular_and_ema_weights_exactly(tmp_path):
    reg, ema = _tiny(seed=1).state_dict(), _tiny(seed=2).state_dict()
    state = {f"net.{to_upstream(k)}": v for k, v in reg.items()}
    state.update({f"net_ema.{to_upstream(k)}": v for k, v in ema.items()})
    state.update(_upstream_extras(64))
    torch.save(state, tmp_path / "model.pt")
    for use_ema, want in ((False, reg), (True, ema)):
        got = build_transformer("tiny-predict1-video2world", weights=tmp_path / "model.pt", ema=use_ema,
                                install_hal_processor=False).state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_released_model_pt_layout_loads(tmp_path):
    """Cosmos-Predict1-7B-Text2World/model.pt: a flat dict of net.* and logvar.* (no EMA)."""
    reg = _tiny("tiny-predict1-text2world", seed=3).state_dict()
    state = {f"net.{to_upstream(k)}": v.to(torch.bfloat16) for k, v in reg.items()}
    state.update(_upstream_extras(64))
    torch.save(state, tmp_path / "model.pt")
    got = build_transformer("tiny-predict1-text2world", weights=tmp_path / "model.pt",
                            install_hal_processor=False).state_dict()
    assert all(torch.equal(got[k], reg[k].to(torch.bfloat16).float()) for k in reg)
    with pytest.raises(KeyError, match="ema=False"):
        build_transformer("tiny-predict1-text2world", weights=tmp_path / "model.pt", ema=True)


def test_ddp_training_checkpoint_with_ema_tracker_loads_both(tmp_path):
    """iter_*.pt of cosmos-predict1's DDP checkpointer: {"model": {"model": net.*, "ema": net-blocks-...}}."""
    reg, ema = _tiny(seed=4).state_dict(), _tiny(seed=5).state_dict()
    model = {f"net.{to_upstream(k)}": v for k, v in reg.items()}
    tracker = {f"net.{to_upstream(k)}".replace(".", "-"): v for k, v in ema.items()}
    tracker["logvar-1-weight"] = torch.randn(1, 128)
    torch.save({"model": {"model": model, "ema": tracker}, "optimizer": {}, "iteration": 10},
               tmp_path / "iter_000000010.pt")
    for use_ema, want in ((False, reg), (True, ema)):
        got = build_transformer("tiny-predict1-video2world", weights=tmp_path / "iter_000000010.pt", ema=use_ema,
                                install_hal_processor=False).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_unknown_layout_error_names_the_keys_and_the_known_layouts(tmp_path):
    torch.save({"encoder.layer0.weight": torch.zeros(2), "head.bias": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        build_transformer("tiny-predict1-text2world", weights=tmp_path / "other.pt")
    msg = str(err.value)
    assert "unknown layout" in msg and "encoder.layer0.weight" in msg and "other.pt" in msg
    assert "net.blocks.block0.blocks.0.block.attn.to_q.0.weight" in msg


def test_predict1_missing_keys_show_their_upstream_names(tmp_path):
    reg = _tiny().state_dict()
    state = {f"net.{to_upstream(k)}": v for k, v in reg.items() if "transformer_blocks.1.ff" not in k}
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.block1\.blocks\.2\.block\.layer1\.weight"):
        build_transformer("tiny-predict1-video2world", weights=tmp_path / "model.pt")


def test_tiny_cosmos1_vae_compresses_8x_and_normalises_like_the_pipeline():
    vae = build_vae("tiny-cosmos1")
    assert type(vae).__name__ == "AutoencoderKLCosmos"
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    latents = encode_video(vae, video)
    assert tuple(latents.shape) == (1, 16, 2, 4, 4) == (1, *presets.get_vae_preset("tiny-cosmos1").latent_shape(9, 32, 32))
    # pipeline_cosmos_video2world.py prepare_latents: (z - mean[:, :, :T]) * sigma_data / std, sigma_data 0.5
    z = vae.encode(video).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, -1, 1, 1)[:, :, :2]
    std = torch.tensor(vae.config.latents_std).view(1, 16, -1, 1, 1)[:, :, :2]
    ref = (z.double() - mean.double()) * 0.5 / std.double()
    assert ((normalize_latents(vae, z).double() - ref).norm() / ref.norm()) < 1e-6
    assert tuple(decode_latents(vae, latents).shape) == (1, 3, 9, 32, 32)


def test_cosmos1_vae_folder_loads_by_its_config_class(tmp_path):
    vae = build_vae("tiny-cosmos1")
    vae.save_pretrained(tmp_path / "vae")
    again = build_vae(tmp_path)
    assert type(again).__name__ == "AutoencoderKLCosmos"
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), again.state_dict().values()))


def test_predict1_lora_checkpoint_loads_with_its_factors_merged(tmp_path):
    """cosmos-predict1's LoRA post-training keeps base weights plus attn.to_{q,v}_lora.net.{0,1}
    (down, up) factors; loading merges W + 1 * up @ down (upstream's lora_scale 1)."""
    base = _tiny(seed=6).state_dict()
    state = {f"net.{to_upstream(k)}": v for k, v in base.items()}
    want = dict(base)
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        for j, attn in ((0, "attn1"), (1, "attn2")):
            for proj in ("q", "v"):
                hf = f"transformer_blocks.{i}.{attn}.to_{proj}.weight"
                out_f, in_f = base[hf].shape
                down, up = torch.randn(8, in_f, generator=g), torch.randn(out_f, 8, generator=g) * 0.1
                prefix = f"net.blocks.block{i}.blocks.{j}.block.attn.to_{proj}_lora.net"
                state[f"{prefix}.0.weight"], state[f"{prefix}.1.weight"] = down, up
                want[hf] = (base[hf].double() + up.double() @ down.double()).float()
    torch.save(state, tmp_path / "iter_000005000_model.pt")
    got = build_transformer("tiny-predict1-video2world", weights=tmp_path / "iter_000005000_model.pt",
                            install_hal_processor=False).state_dict()
    assert got.keys() == want.keys()
    adapted = [k for k in want if not torch.equal(want[k], base[k])]
    assert len(adapted) == 8
    assert all(torch.equal(got[k], base[k]) for k in want if k not in adapted)
    for k in adapted:
        assert float((got[k].double() - want[k].double()).norm() / want[k].double().norm()) < 1e-6, k
