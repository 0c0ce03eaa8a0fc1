"""Key conversion between NVIDIA's Cosmos DiTs and diffusers' ``CosmosTransformer3DModel``:
Predict2 (``MiniTrainDIT`` / ``MinimalV1LVGDiT`` in cosmos-predict2 1.0.9) and Predict1
(``GeneralDIT`` in nvidia-cosmos/cosmos-predict1, ``cosmos_predict1/diffusion/networks/general_dit.py``).

Why a table of whole-key templates instead of chained substring replacements: each key maps
to exactly one key both ways, a key that matches no template is reported instead of being
half-renamed, and the same table answers the reverse direction (export to upstream naming).
The correspondence follows upstream's module names (``x_embedder.proj.1``, ``t_embedder.1``,
``blocks.N.self_attn.q_proj`` with ``q_norm``, ``adaln_modulation_{self_attn,cross_attn,mlp}``,
``mlp.layer1/2``, ``final_layer``, ``t_embedding_norm``, ``crossattn_proj``) and diffusers'
conversion script (``scripts/convert_cosmos_to_diffusers.py``, Cosmos 2.0 / 2.5 tables).

Keys dropped on purpose (they hold no learnable weights diffusers has):
- ``*._extra_state``: TransformerEngine's FP8 metadata of its RMSNorm / attention modules.
- ``pos_embedder.seq``, ``pos_embedder.dim_spatial_range``, ``pos_embedder.dim_temporal_range``:
  upstream's RoPE tables, stored as buffers; diffusers recomputes the same tables in
  ``CosmosRotaryPosEmbed.forward`` from ``max_size`` and ``rope_scale``.
- ``accum_video_sample_counter``, ``accum_image_sample_counter``, ``accum_iteration``,
  ``accum_train_in_hours``: upstream's training statistics (``WeightTrainingStat`` buffers).
- ``logvar.*``: Cosmos-1's noise-uncertainty head, not part of the denoiser's output.

Predict1 keys (``blocks.block{i}.blocks.{0,1,2}`` = self-attention, cross-attention, MLP of a
``GeneralDITTransformerBlock``; ``attn.to_q`` = ``Sequential(Linear, RMSNorm)``; ``affline_norm``
is upstream's spelling) follow diffusers' ``TRANSFORMER_KEYS_RENAME_DICT_COSMOS_1_0`` and
``TRANSFORMER_SPECIAL_KEYS_REMAP_COSMOS_1_0`` (``blocks.block`` renaming; ``logvar.*`` and
``pos_embedder.seq`` removed); tests/test_predict1_models.py checks the table against those rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_BLOCK = "blocks.{i}."
_HF_BLOCK = "transformer_blocks.{i}."

DROPPED_SUFFIXES = ("._extra_state",)
DROPPED_KEYS = frozenset(
    {
        "pos_embedder.seq",
        "pos_embedder.dim_spatial_range",
        "pos_embedder.dim_temporal_range",
        "accum_video_sample_counter",
        "accum_image_sample_counter",
        "accum_iteration",
        "accum_train_in_hours",
    }
)
DROPPED_PREFIXES = ("logvar.",)


def _outer_pairs(time_norm: str, final_adaln: str) -> list[tuple[str, str]]:
    """Patch/time embedders, learnable positions and final layer: named alike in both families
    except the time-embedding norm and the final layer's adaLN (``t_embedding_norm`` /
    ``adaln_modulation`` in Predict2, ``affline_norm`` / ``adaLN_modulation`` in Predict1)."""
    pairs = [
        ("x_embedder.proj.1.weight", "patch_embed.proj.weight"),
        ("t_embedder.1.linear_1.weight", "time_embed.t_embedder.linear_1.weight"),
        ("t_embedder.1.linear_2.weight", "time_embed.t_embedder.linear_2.weight"),
        (f"{time_norm}.weight", "time_embed.norm.weight"),
        ("final_layer.linear.weight", "proj_out.weight"),
        (f"final_layer.{final_adaln}.1.weight", "norm_out.linear_1.weight"),
        (f"final_layer.{final_adaln}.2.weight", "norm_out.linear_2.weight"),
    ]
    pairs += [(f"extra_pos_embedder.pos_emb_{a}", f"learnable_pos_embed.pos_emb_{a}") for a in ("t", "h", "w")]
    return pairs


def _pairs() -> list[tuple[str, str]]:
    """(upstream template, diffusers template); ``{i}`` is a block index."""
    pairs = _outer_pairs("t_embedding_norm", "adaln_modulation") + [
        ("crossattn_proj.0.weight", "crossattn_proj.0.weight"),
        ("crossattn_proj.0.bias", "crossattn_proj.0.bias"),
    ]
    for up_attn, hf_attn in (("self_attn", "attn1"), ("cross_attn", "attn2")):
        for up, hf in (
            ("q_proj", "to_q"),
            ("k_proj", "to_k"),
            ("v_proj", "to_v"),
            ("output_proj", "to_out.0"),
            ("q_norm", "norm_q"),
            ("k_norm", "norm_k"),
        ):
            pairs.append((f"{_BLOCK}{up_attn}.{up}.weight", f"{_HF_BLOCK}{hf_attn}.{hf}.weight"))
    for up_mod, hf_norm in (("self_attn", "norm1"), ("cross_attn", "norm2"), ("mlp", "norm3")):
        for j in (1, 2):
            pairs.append((f"{_BLOCK}adaln_modulation_{up_mod}.{j}.weight", f"{_HF_BLOCK}{hf_norm}.linear_{j}.weight"))
    pairs.append((f"{_BLOCK}mlp.layer1.weight", f"{_HF_BLOCK}ff.net.0.proj.weight"))
    pairs.append((f"{_BLOCK}mlp.layer2.weight", f"{_HF_BLOCK}ff.net.2.weight"))
    return pairs


_P1_BLOCK = "blocks.block{i}.blocks."


def _pairs_predict1() -> list[tuple[str, str]]:
    """(upstream GeneralDIT template, diffusers template) for Predict1 / Cosmos 1.0."""
    pairs = _outer_pairs("affline_norm", "adaLN_modulation")
    for j, hf_attn in ((0, "attn1"), (1, "attn2")):
        attn = f"{_P1_BLOCK}{j}.block.attn."
        for up, hf in (("to_q.0", "to_q"), ("to_k.0", "to_k"), ("to_v.0", "to_v"), ("to_out.0", "to_out.0"),
                       ("to_q.1", "norm_q"), ("to_k.1", "norm_k")):
            pairs.append((f"{attn}{up}.weight", f"{_HF_BLOCK}{hf_attn}.{hf}.weight"))
    for j, hf_norm in ((0, "norm1"), (1, "norm2"), (2, "norm3")):
        for k in (1, 2):
            pairs.append((f"{_P1_BLOCK}{j}.adaLN_modulation.{k}.weight", f"{_HF_BLOCK}{hf_norm}.linear_{k}.weight"))
    pairs.append((f"{_P1_BLOCK}2.block.layer1.weight", f"{_HF_BLOCK}ff.net.0.proj.weight"))
    pairs.append((f"{_P1_BLOCK}2.block.layer2.weight", f"{_HF_BLOCK}ff.net.2.weight"))
    return pairs


def _compile(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + r"\Z")


# Upstream names of the two families never collide (``blocks.{i}.`` vs ``blocks.block{i}.``,
# ``t_embedding_norm`` vs ``affline_norm``, ...), so one forward table serves both.
_UP_TO_HF = [(_compile(up), hf) for up, hf in _pairs() + _pairs_predict1()]
_HF_TO_UP = {
    "predict2": [(_compile(hf), up) for up, hf in _pairs()],
    "predict1": [(_compile(hf), up) for up, hf in _pairs_predict1()],
}


def is_dropped_upstream_key(key: str) -> bool:
    return key in DROPPED_KEYS or key.endswith(DROPPED_SUFFIXES) or key.startswith(DROPPED_PREFIXES)


def _rename(key: str, table) -> str | None:
    for pattern, template in table:
        m = pattern.match(key)
        if m:
            return template.format(**m.groupdict())
    return None


def upstream_key_to_diffusers(key: str) -> str | None:
    """The diffusers name of an upstream DiT key; None for keys dropped on purpose.

    A key that matches no rule is returned unchanged, so the fit check reports it as
    unexpected (never silently skipped)."""
    if is_dropped_upstream_key(key):
        return None
    new = _rename(key, _UP_TO_HF)
    return key if new is None else new


def diffusers_key_to_upstream(key: str, family: str = "predict2") -> str:
    """The upstream name of a diffusers key: ``family`` "predict2" (MiniTrainDIT) or "predict1" (GeneralDIT)."""
    new = _rename(key, _HF_TO_UP[family])
    if new is None:
        raise KeyError(f"diffusers key {key!r} has no upstream ({family}) name")
    return new


def upstream_family(keys: Iterable[str]) -> str:
    """"predict1" for GeneralDIT naming (``blocks.block0...``, ``affline_norm``), else "predict2"."""
    return "predict1" if any(k.startswith(("blocks.block", "affline_norm")) for k in keys) else "predict2"


def looks_like_upstream(keys: Iterable[str]) -> bool:
    """True for MiniTrainDIT naming (``blocks.N.self_attn...``, ``x_embedder...``)."""
    return any(k.startswith(("blocks.", "x_embedder.", "t_embedder.", "final_layer.")) for k in keys)


_P1_LORA = re.compile(r"(?P<attn>.+\.block\.attn)\.to_(?P<proj>q|k|v|out)_lora\.net\.0\.weight\Z")
PREDICT1_LORA_SCALE = 1.0


def fold_predict1_lora(state_dict: dict, scale: float = PREDICT1_LORA_SCALE) -> tuple[dict, int]:
    """Merge cosmos-predict1 LoRA factors into the attention weights they adapt.

    A LoRA post-trained cosmos-predict1 checkpoint (seed experiment
    ``text2world_7b_lora_example_cosmos_nemo_assets``) holds the base weights plus, per adapted
    projection, ``attn.to_q_lora.net.0.weight`` (down, rank x in) and ``.net.1.weight`` (up, out x
    rank): ``LoRALinearLayer`` in ``cosmos_predict1/diffusion/training/utils/peft/lora_net.py``,
    applied as ``to_q[0](x) + lora_scale * up(down(x))`` (``peft/lora_attn.py`` ``cal_qkv_lora``).
    The scale is not stored; upstream's configs use 1 (``get_fa_ca_qv_lora_config(..., scale=1)``).
    Returns (state dict without the factors, number of projections merged)."""
    out, folded = dict(state_dict), 0
    for key in list(state_dict):
        m = _P1_LORA.match(key)
        if not m:
            continue
        up_key = key[: -len("0.weight")] + "1.weight"
        base_key = f"{m['attn']}.to_{m['proj']}.0.weight"
        if up_key not in state_dict or base_key not in state_dict:
            raise KeyError(f"LoRA factor {key} has no {up_key if up_key not in state_dict else base_key} beside it")
        down, up, base = out.pop(key), out.pop(up_key), state_dict[base_key]
        out[base_key] = (base.float() + scale * (up.float() @ down.float())).to(base.dtype)
        folded += 1
    return out, folded


def upstream_to_diffusers(state_dict: dict) -> tuple[dict, list[str]]:
    """Rename an upstream DiT state dict (no ``net.`` prefix) to diffusers naming.

    Returns (converted, dropped_keys)."""
    out, dropped = {}, []
    for key, value in state_dict.items():
        new = upstream_key_to_diffusers(key)
        if new is None:
            dropped.append(key)
            continue
        if new in out:
            raise ValueError(f"two checkpoint keys map to diffusers key {new!r} (second: {key!r})")
        out[new] = value
    return out, dropped


def diffusers_to_upstream(state_dict: dict, prefix: str = "", family: str = "predict2") -> dict:
    """diffusers naming -> upstream naming (with an optional ``net.`` / ``net_ema.`` prefix)."""
    return {prefix + diffusers_key_to_upstream(k, family): v for k, v in state_dict.items()}
