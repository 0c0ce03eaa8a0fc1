"""Frame-rate handling of the DiT's temporal RoPE.

diffusers' ``CosmosRotaryPosEmbed.forward(hidden_states, fps)`` scales the temporal
positions by ``base_fps / fps`` (base_fps = 24) whenever ``fps`` is given, and
``Cosmos2VideoToWorldPipeline.__call__`` always passes its ``fps`` argument (default 16)
to the transformer: positions 0, 1, 2, ... become 0, 1.5, 3, ...

NVIDIA's released Predict2 checkpoints were trained without that modulation (upstream
cosmos-predict2 1.0.9 builds ``VideoRopePosition3DEmb`` with fps modulation off), so the
faithful default is *unscaled* temporal RoPE, exactly what ``fps=None`` computes, i.e. as if
fps equalled base_fps. We get it with a forward pre-hook on the rope module that drops the
fps argument: exact (no ``k / 24 * 24`` rounding), local to this model, and removable.
The pipeline's ``fps`` is then only the frame rate written into the mp4.
"""

from __future__ import annotations


def _drop_fps(module, args, kwargs):
    if len(args) > 1:  # rope(hidden_states, fps) called positionally
        args = args[:1]
    kwargs = dict(kwargs)
    kwargs["fps"] = None
    return args, kwargs


def disable_fps_scaling(transformer):
    """Make ``transformer``'s temporal RoPE ignore fps (the checkpoints' behaviour).

    Returns the hook handle (``handle.remove()`` restores diffusers' behaviour); returns None
    for a model without a ``rope`` module. Idempotent."""
    rope = getattr(transformer, "rope", None)
    if rope is None:
        return None
    existing = getattr(rope, "_cosmos_hal_fps_hook", None)
    if existing is not None:
        return existing
    handle = rope.register_forward_pre_hook(_drop_fps, with_kwargs=True)
    rope._cosmos_hal_fps_hook = handle
    return handle


def enable_fps_scaling(transformer) -> None:
    """Undo :func:`disable_fps_scaling`: diffusers' fps-scaled temporal RoPE again."""
    rope = getattr(transformer, "rope", None)
    handle = getattr(rope, "_cosmos_hal_fps_hook", None) if rope is not None else None
    if handle is not None:
        handle.remove()
        rope._cosmos_hal_fps_hook = None


def temporal_rope_scale(transformer, fps) -> float:
    """The factor the transformer applies to temporal positions for this ``fps`` (for logs)."""
    rope = getattr(transformer, "rope", None)
    if rope is None or fps is None or getattr(rope, "_cosmos_hal_fps_hook", None) is not None:
        return 1.0
    return float(rope.base_fps) / float(fps)
