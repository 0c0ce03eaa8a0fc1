"""Key conversion between NVIDIA's Cosmos-Predict2 DiT (``MiniTrainDIT`` /
``MinimalV1LVGDiT`` in cosmos-predict2 1.0.9) and diffusers' ``CosmosTransformer3DModel``.

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


def _pairs() -> list[tuple[str, str]]:
    """(upstream template, diffusers template); ``{i}`` is a block index."""
    pairs = [
        ("x_embedder.proj.1.weight", "patch_embed.proj.weight"),
        ("t_embedder.1.linear_1.weight", "time_embed.t_embedder.linear_1.weight"),
        ("t_embedder.1.linear_2.weight", "time_embed.t_embedder.linear_2.weight"),
        ("t_embedding_norm.weight", "time_embed.norm.weight"),
        ("final_layer.linear.weight", "proj_out.weight"),
        ("final_layer.adaln_modulation.1.weight", "norm_out.linear_1.weight"),
        ("final_layer.adaln_modulation.2.weight", "norm_out.linear_2.weight"),
        ("crossattn_proj.0.weight", "crossattn_proj.0.weight"),
        ("crossattn_proj.0.bias", "crossattn_proj.0.bias"),
    ]
    for axis in ("t", "h", "w"):
        pairs.append((f"extra_pos_embedder.pos_emb_{axis}", f"learnable_pos_embed.pos_emb_{axis}"))
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


def _compile(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + r"\Z")


_UP_TO_HF = [(_compile(up), hf) for up, hf in _pairs()]
_HF_TO_UP = [(_compile(hf), up) for up, hf in _pairs()]


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


def diffusers_key_to_upstream(key: str) -> str:
    new = _rename(key, _HF_TO_UP)
    if new is None:
        raise KeyError(f"diffusers key {key!r} has no upstream (MiniTrainDIT) name")
    return new


def looks_like_upstream(keys: Iterable[str]) -> bool:
    """True for MiniTrainDIT naming (``blocks.N.self_attn...``, ``x_embedder...``)."""
    return any(k.startswith(("blocks.", "x_embedder.", "t_embedder.", "final_layer.")) for k in keys)


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


def diffusers_to_upstream(state_dict: dict, prefix: str = "") -> dict:
    """diffusers naming -> upstream naming (with an optional ``net.`` / ``net_ema.`` prefix)."""
    return {prefix + diffusers_key_to_upstream(k): v for k, v in state_dict.items()}
