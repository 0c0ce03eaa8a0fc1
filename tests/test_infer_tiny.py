"""A tiny Cosmos2 pipeline folder built offline, for the inference tests (helpers, plus a
check of the offline tokenizer they rely on).

Tiny DiT from the models presets, tiny Wan VAE, a one-layer T5 encoder with a word-level
tokenizer built from a fixed vocabulary (no download), FlowMatchEulerDiscreteScheduler as
diffusers' conversion script configures it for Predict2. Saved with save_pretrained, so the
CLI loads it like a real nvidia/Cosmos-Predict2 download.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ("a robot arm picks up the red cube and places it in box green ball table moves slowly "
         "camera static blurry ugly bad video").split()
TEXT_MAX_LENGTH = 16  # tokens; the pipelines pad prompts to max_sequence_length=512 anyway


def build_tokenizer():
    from cosmos_hal.data.synthetic import word_tokenizer

    return word_tokenizer(WORDS, punctuation=False)


def build_text_encoder(d_model: int, vocab_size: int):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)  # test fixture only; the model's values do not shape any loss
    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=16, d_ff=2 * d_model, num_layers=1, num_heads=2)
    return T5EncoderModel(cfg).eval()


def save_tiny_pipeline(folder, task: str = "video2world") -> Path:
    """Write a tiny Cosmos2 pipeline (``task``: video2world or text2image) to ``folder``."""
    from diffusers import Cosmos2TextToImagePipeline, Cosmos2VideoToWorldPipeline, FlowMatchEulerDiscreteScheduler

    from cosmos_hal.infer.guardrail import PassThroughSafetyChecker
    from cosmos_hal.models.dit import build_transformer
    from cosmos_hal.models.presets import get_preset
    from cosmos_hal.models.vae import build_vae

    preset = "tiny" if task == "video2world" else "tiny-t2i"
    transformer = build_transformer(preset, init_seed=1, install_hal_processor=False)
    vae = build_vae("tiny", init_seed=2)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(get_preset(preset).text_embed_dim, len(tokenizer))
    cls = Cosmos2VideoToWorldPipeline if task == "video2world" else Cosmos2TextToImagePipeline
    pipe = cls(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
               scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True),
               safety_checker=PassThroughSafetyChecker())
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder


def write_image(path, height: int = 32, width: int = 48, seed: int = 0) -> Path:
    """A smooth synthetic RGB image (gradients plus a square), deterministic."""
    import numpy as np

    from cosmos_hal.data.video_io import write_image as _write

    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y + 40 * seed) % 256], -1)
    img[height // 4 : height // 2, width // 4 : width // 2] = (200, 30, 60)
    return _write(path, img.astype(np.uint8))


def save_tiny_predict25_pipeline(folder) -> Path:
    """A tiny Cosmos-Predict2.5 pipeline: tiny-2.5 DiT, a 3-layer Qwen2.5-VL text model of
    width 32 (3 x 32 = 96 features, what tiny-2.5 projects), the word-level tokenizer with a
    plain chat template, UniPC with flow sigmas as diffusers' conversion script sets it."""
    import torch
    from diffusers import Cosmos2_5_PredictBasePipeline, UniPCMultistepScheduler
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from cosmos_hal.infer.guardrail import PassThroughSafetyChecker
    from cosmos_hal.models.dit import build_transformer
    from cosmos_hal.models.vae import build_vae

    tokenizer = build_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{% for c in m['content'] %}{{ c['text'] }} {% endfor %}{% endfor %}"
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         bos_token_id=1, eos_token_id=1, pad_token_id=0,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
    )
    torch.manual_seed(0)  # test fixture only
    text_encoder = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    scheduler = UniPCMultistepScheduler(use_karras_sigmas=True, use_flow_sigmas=True,
                                        prediction_type="flow_prediction", sigma_max=200.0, sigma_min=0.01)
    pipe = Cosmos2_5_PredictBasePipeline(
        text_encoder=text_encoder, tokenizer=tokenizer,
        transformer=build_transformer("tiny-2.5", init_seed=1, install_hal_processor=False),
        vae=build_vae("tiny", init_seed=2), scheduler=scheduler, safety_checker=PassThroughSafetyChecker())
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder


def test_offline_tokenizer_pads_to_max_length_with_eos_and_masks_padding():
    tok = build_tokenizer()
    enc = tok(["a robot arm", "the red cube moves slowly"], padding="max_length", max_length=TEXT_MAX_LENGTH,
              truncation=True, return_tensors="pt")
    assert tuple(enc.input_ids.shape) == (2, TEXT_MAX_LENGTH)
    assert enc.attention_mask.sum(1).tolist() == [4, 6]  # words + </s>
    assert enc.input_ids[0, 3].item() == tok.eos_token_id and enc.input_ids[0, 4].item() == tok.pad_token_id
    assert tok.unk_token_id not in enc.input_ids[0, :3].tolist()
