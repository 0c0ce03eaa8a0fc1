"""Weight loading: diffusers folders and NVIDIA (cosmos-predict2) checkpoints, strictly."""

import pytest
import torch

from cosmos_hal import rng
from cosmos_hal.models import convert
from cosmos_hal.models.dit import build_transformer
from cosmos_hal.models.loading import CheckpointMismatchError, read_transformer_state_dict

# Upstream's module tree (cosmos_predict2/models/text2image_dit.py, MiniTrainDIT), written
# independently of cosmos_hal.models.convert: diffusers module path -> upstream module path.
UPSTREAM_TOP = {
    "patch_embed.proj": "x_embedder.proj.1",  # Sequential(Rearrange, Linear)
    "time_embed.t_embedder": "t_embedder.1",  # Sequential(Timesteps, TimestepEmbedding)
    "time_embed.norm": "t_embedding_norm",
    "norm_out": "final_layer.adaln_modulation",  # linear_1/2 -> 1/2 below
    "proj_out": "final_layer.linear",
    "crossattn_proj.0": "crossattn_proj.0",
}
UPSTREAM_BLOCK = {
    "attn1": "self_attn",
    "attn2": "cross_attn",
    "to_q": "q_proj",
    "to_k": "k_proj",
    "to_v": "v_proj",
    "to_out.0": "output_proj",
    "norm_q": "q_norm",
    "norm_k": "k_norm",
    "norm1": "adaln_modulation_self_attn",
    "norm2": "adaln_modulation_cross_attn",
    "norm3": "adaln_modulation_mlp",
    "linear_1": "1",
    "linear_2": "2",
    "ff.net.0.proj": "mlp.layer1",
    "ff.net.2": "mlp.layer2",
}


def upstream_name(key: str) -> str:
    module, leaf = key.rsplit(".", 1)
    if module.startswith("transformer_blocks."):
        _, idx, rest = module.split(".", 2)
        parts = rest.split(".")
        out, i = [], 0
        while i < len(parts):  # longest match first
            for n in (4, 3, 2, 1):
                seg = ".".join(parts[i : i + n])
                if seg in UPSTREAM_BLOCK:
                    out.append(UPSTREAM_BLOCK[seg])
                    i += n
                    break
            else:
                raise AssertionError(f"test table lacks {key}")
        return f"blocks.{idx}.{'.'.join(out)}.{leaf}"
    if module == "norm_out.linear_1":
        return f"final_layer.adaln_modulation.1.{leaf}"
    if module == "norm_out.linear_2":
        return f"final_layer.adaln_modulation.2.{leaf}"
    if module.startswith("time_embed.t_embedder."):
        return f"t_embedder.1.{module.split('.')[-1]}.{leaf}"
    return f"{UPSTREAM_TOP[module]}.{leaf}"


def upstream_state(model, seed, dtype):
    """An upstream-named state dict with fresh values plus the non-weight extras upstream saves."""
    out = {}
    for i, (k, v) in enumerate(sorted(model.state_dict().items())):
        out[upstream_name(k)] = rng.normal(rng.Key(seed, "ckpt", index=i), tuple(v.shape)).to(dtype)
    out["pos_embedder.seq"] = torch.arange(128.0)
    out["pos_embedder.dim_spatial_range"] = torch.arange(10.0) / 20
    out["pos_embedder.dim_temporal_range"] = torch.arange(6.0) / 12
    out["accum_iteration"] = torch.tensor(10)
    out["accum_train_in_hours"] = torch.tensor(0.5)
    out["blocks.0.self_attn.q_norm._extra_state"] = torch.zeros(0, dtype=torch.uint8)
    out["blocks.1.cross_attn.attn_op._extra_state"] = torch.zeros(0, dtype=torch.uint8)
    return out


@pytest.fixture(scope="module")
def tiny():
    return build_transformer("tiny", install_hal_processor=False)


@pytest.fixture(scope="module")
def iter_ckpt(tiny, tmp_path_factory):
    net = upstream_state(tiny, 1, torch.bfloat16)  # upstream saves net in bf16, EMA in fp32
    ema = upstream_state(tiny, 2, torch.float32)
    path = tmp_path_factory.mktemp("ckpt") / "iter_000000010.pt"
    torch.save({**{"net." + k: v for k, v in net.items()}, **{"net_ema." + k: v for k, v in ema.items()}}, path)
    return path, net, ema


def _assert_matches_upstream(model, upstream):
    sd = model.state_dict()
    assert len(sd) > 0
    for k, v in sd.items():
        ref = upstream[upstream_name(k)]
        assert v.dtype == torch.float32
        assert torch.equal(v, ref.float()), k


def test_test_table_agrees_with_the_converter(tiny):
    keys = list(tiny.state_dict())
    assert all(convert.diffusers_key_to_upstream(k) == upstream_name(k) for k in keys)
    assert all(convert.upstream_key_to_diffusers(upstream_name(k)) == k for k in keys)


@pytest.mark.parametrize("ema", [False, True])
def test_iter_checkpoint_loads_net_or_ema_exactly(iter_ckpt, ema):
    path, net, ema_sd = iter_ckpt
    model = build_transformer("tiny", weights=path, ema=ema, install_hal_processor=False)
    _assert_matches_upstream(model, ema_sd if ema else net)
    assert all(not p.is_meta for p in model.parameters())


def test_released_checkpoint_without_prefix_loads(tiny, tmp_path):
    released = upstream_state(tiny, 3, torch.bfloat16)
    path = tmp_path / "model-720p-16fps.pt"
    torch.save(released, path)
    model = build_transformer("tiny", weights=path, dtype=torch.bfloat16, install_hal_processor=False)
    for k, v in model.state_dict().items():
        assert v.dtype == torch.bfloat16 and torch.equal(v, released[upstream_name(k)]), k
    with pytest.raises(KeyError, match="no net_ema"):
        read_transformer_state_dict(path, ema=True)


def test_missing_key_is_listed(tiny, tmp_path):
    sd = upstream_state(tiny, 4, torch.float32)
    del sd["blocks.1.mlp.layer2.weight"]
    torch.save({"net." + k: v for k, v in sd.items()}, tmp_path / "iter_000000001.pt")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys[^\n]*\(1\):\n *transformer_blocks\.1\.ff\.net\.2\.weight \(upstream: blocks\.1\.mlp\.layer2\.weight\)"):
        build_transformer("tiny", weights=tmp_path / "iter_000000001.pt", install_hal_processor=False)


def test_unexpected_key_is_listed(tiny, tmp_path):
    sd = upstream_state(tiny, 5, torch.float32)
    sd["blocks.0.self_attn.extra_proj.weight"] = torch.zeros(3, 3)
    torch.save({"net." + k: v for k, v in sd.items()}, tmp_path / "iter_000000002.pt")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys[^\n]*\(1\):\n *blocks\.0\.self_attn\.extra_proj\.weight"):
        build_transformer("tiny", weights=tmp_path / "iter_000000002.pt", install_hal_processor=False)


def test_wrong_shape_is_listed_with_both_shapes(tmp_path):
    t2i = build_transformer("tiny-t2i", install_hal_processor=False)  # 16 + 1 input channels, not 17 + 1
    sd = upstream_state(t2i, 6, torch.float32)
    torch.save({"net." + k: v for k, v in sd.items()}, tmp_path / "iter_000000003.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        build_transformer("tiny", weights=tmp_path / "iter_000000003.pt", install_hal_processor=False)
    msg = str(err.value)
    assert "patch_embed.proj.weight: (64, 68) vs (64, 72)" in msg and "iter_000000003.pt" in msg
    assert err.value.mismatched and not err.value.missing and not err.value.unexpected


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="iter_000000099.pt"):
        build_transformer("tiny", weights=tmp_path / "iter_000000099.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_transformer("tiny", weights=tmp_path / "empty")


@pytest.mark.parametrize("sharded", [False, True])
def test_diffusers_folder_round_trip(tiny, tmp_path, sharded):
    folder = tmp_path / "pipe" / "transformer"
    tiny.save_pretrained(folder, max_shard_size="50KB" if sharded else "10GB")
    assert (folder / "diffusion_pytorch_model.safetensors.index.json").exists() == sharded
    for where in (folder, tmp_path / "pipe"):
        model = build_transformer(None, weights=where, install_hal_processor=False)
        assert model.config.num_layers == 2 and model.config.in_channels == 17
        a, b = tiny.state_dict(), model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_meta_build_then_load_needs_no_init(iter_ckpt):
    path, net, _ = iter_ckpt
    state = torch.get_rng_state()
    model = build_transformer("tiny", weights=path, meta=True, install_hal_processor=False)
    assert torch.equal(state, torch.get_rng_state())
    _assert_matches_upstream(model, net)


def test_checkpoint_file_without_preset_asks_for_one(iter_ckpt):
    with pytest.raises(ValueError, match="name the preset"):
        build_transformer(None, weights=iter_ckpt[0])


def test_transformer_engine_bytesio_extra_state_is_dropped(tiny, tmp_path, caplog):
    """Older TransformerEngine pickles its extra state as io.BytesIO, which weights_only refuses."""
    import io

    sd = upstream_state(tiny, 7, torch.float32)
    sd["blocks.0.self_attn.attn_op._extra_state"] = io.BytesIO(b"fp8 meta")
    torch.save({"net." + k: v for k, v in sd.items()}, tmp_path / "iter_000000004.pt")
    with caplog.at_level("WARNING"):
        model = build_transformer("tiny", weights=tmp_path / "iter_000000004.pt", install_hal_processor=False)
    assert "weights_only" in caplog.text
    _assert_matches_upstream(model, sd)
