"""Cosmos DiT / VAE / text-encoder builders, presets, weight loading and the cosmos_hal attention processor.

Public entry points (import the submodule; nothing heavy is imported here):
- presets: ``get_preset(name)``, ``get_vae_preset(name)``, ``TransformerPreset``, ``VAEPreset``,
  ``CosmosVAEPreset`` (Predict1's Cosmos 1.0 VAE)
- dit: ``build_transformer(preset, *, weights, dtype, device, meta, install_hal_processor, ema, init_seed, init)``
- vae: ``build_vae``, ``encode_video``, ``decode_latents``, ``normalize_latents``, ``denormalize_latents``
- text: ``load_text_encoder``, ``encode_prompts``
- loading: ``load_transformer_weights``, ``read_transformer_state_dict``, ``CheckpointMismatchError``
- convert: ``upstream_to_diffusers``, ``diffusers_to_upstream`` (NVIDIA MiniTrainDIT / Predict1 GeneralDIT
  <-> diffusers keys)
- lora (LoRA / DoRA / LoKr): ``add_adapters`` / ``apply_lora``, ``save_adapters`` / ``save_lora_weights``,
  ``load_adapters``
- processor: ``install_processor`` (cosmos_hal attention inside diffusers' Cosmos attention)
"""
