"""Text2Image validation during training: every ``validation_every`` iterations the validation
prompts are rendered with the weights being trained into ``<output_dir>/validation/step_N/``
and, where TensorBoard is importable, logged under ``validation/``.

Why this shape (SimpleTuner's validation_step_interval, seed 002): the images come from the
inference code users run afterwards (diffusers' Cosmos2TextToImagePipeline, cosmos-predict2's
sampler from infer/sampler.py, initial noise from infer/noise.py keyed by (seed, prompt index)),
so a validation image is what ``python -m cosmos_hal infer text2image`` would make from that
checkpoint. The live model is used in place, with the EMA weights copied in for the render and
the trained weights copied back bit for bit afterwards (adapters: the EMA of the adapters, or
the adapters themselves without EMA); every rank takes part, because under FSDP2 or context
parallelism a forward needs all of them, and rank 0 writes the files. The prompts' T5
embeddings are computed once at start into the text cache (data/text_cache.py), so no text
encoder stays in memory. Every RNG state is captured before and restored after, so a run with
validation trains exactly as one without.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from cosmos_hal import dist, rng

log = logging.getLogger("cosmos_hal.train")


def parse_prompts(text: str) -> list[tuple[str, str]]:
    """[(file name, prompt)]: a .json prompt library {"nickname": "prompt"} (SimpleTuner's
    validation_prompt_library; nicknames name the files), else prompts separated by "|"."""
    text = text.strip()
    if text.endswith(".json"):
        path = Path(text)
        try:
            library = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"validation_prompts={text}: cannot read the prompt library ({err}); give a JSON "
                             '{"nickname": "prompt", ...} file, or the prompts themselves separated by "|"') from None
        if not isinstance(library, dict) or not library or not all(isinstance(v, str) for v in library.values()):
            raise ValueError(f'validation_prompts={text}: expected a JSON object {{"nickname": "prompt", ...}}')
        return [(f"{i:02d}_{_slug(k)}", v.strip()) for i, (k, v) in enumerate(library.items())]
    prompts = [p.strip() for p in text.split("|") if p.strip()]
    return [(f"{i:02d}_{_slug(p)}", p) for i, p in enumerate(prompts)]


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:limit] or "prompt"


class Validator:
    """Built once before the loop; ``maybe_run(iteration)`` after each iteration."""

    def __init__(self, exp, world, logger, *, model, vae, ema, preset, backend):
        self.every = int(exp.validation_every)
        if self.every <= 0:
            return
        from cosmos_hal.data.t5_pickle import pad_embedding, read_t5_pickle
        from cosmos_hal.train import image_data

        self.exp, self.world, self.logger = exp, world, logger
        self.model, self.vae, self.ema, self.backend = model, vae, ema, backend
        self.prompts = parse_prompts(exp.validation_prompts)
        cache = image_data.open_cache(exp, preset, f"validation_every={exp.validation_every} (to embed "
                                                   "validation_prompts)")
        texts = [p for _, p in self.prompts] + [exp.validation_negative_prompt]
        # a few prompts: encoded on the host, beside a model that may fill the device (image folders
        # have them cached with their captions already, before the model was built)
        image_data.fill_cache(cache, texts, world, logger, device=torch.device("cpu"))

        def embed(text):
            arr, _ = pad_embedding(read_t5_pickle(cache.path(text), text_embed_dim=preset.context_dim,
                                                  num_tokens=preset.text_max_length), preset.text_max_length)
            return torch.from_numpy(arr)[None].to(world.device)

        self.embeds = {t: embed(t) for t in texts}
        self.root = Path(exp.resolved_output_dir()) / "validation"
        self.tb = getattr(logger, "tb", None)
        weights = "EMA" if ema is not None else "trained"
        logger.info(f"validation every {self.every} iterations: {len(self.prompts)} prompt(s) at "
                    f"{exp.data.height}x{exp.data.width}, {exp.validation_steps} steps, guidance "
                    f"{exp.validation_guidance:g}, {weights} weights, into {self.root}/step_N/")
        if self.tb is None:
            logger.info("validation images are not logged to TensorBoard (torch.utils.tensorboard or the tensorboard "
                        "package is not importable: pip install tensorboard); they are written as PNG files only")

    def maybe_run(self, iteration: int) -> None:
        if self.every > 0 and iteration % self.every == 0:
            self.run(iteration)

    def _pipeline(self):
        from diffusers import Cosmos2TextToImagePipeline

        from cosmos_hal.infer.guardrail import PassThroughSafetyChecker
        from cosmos_hal.infer.loader import default_scheduler
        from cosmos_hal.infer.sampler import use_sampler

        pipe = Cosmos2TextToImagePipeline(text_encoder=None, tokenizer=None, transformer=self.model, vae=self.vae,
                                          scheduler=default_scheduler(), safety_checker=PassThroughSafetyChecker())
        use_sampler(pipe, "upstream")
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def _swap(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copy ``weights`` into the model's parameters (local shards); return what was there."""
        params = dict(self.model.named_parameters())
        before = {}
        for name, value in weights.items():
            local = params[name].to_local() if hasattr(params[name], "to_local") else params[name]
            before[name] = local.detach().to("cpu", copy=True)
            local.copy_(value.to_local() if hasattr(value, "to_local") else value)
        return before

    def run(self, iteration: int) -> list[Path]:
        from cosmos_hal.data.video_io import write_image
        from cosmos_hal.infer import noise

        exp, model = self.exp, self.model
        state = rng.capture_state()
        trained = self._swap(self.ema.shadow) if self.ema is not None else None
        was_training = model.training
        model.eval()
        written = []
        try:
            pipe = self._pipeline()
            h, w = exp.data.height, exp.data.width
            shape = noise.latent_shape(self.vae.config, model.config, height=h, width=w, num_frames=1)
            negative = self.embeds[exp.validation_negative_prompt]
            amp = exp.precision == "bf16"
            for i, (name, prompt) in enumerate(self.prompts):
                latents = noise.initial_latents(exp.seed, shape, index=i, device=self.world.device)
                with torch.autocast(device_type=self.backend.device_type, dtype=torch.bfloat16, enabled=amp):
                    out = pipe(prompt_embeds=self.embeds[prompt], negative_prompt_embeds=negative, latents=latents,
                               height=h, width=w, num_inference_steps=exp.validation_steps,
                               guidance_scale=exp.validation_guidance, output_type="np")
                image = (out.images[0].clip(0, 1) * 255).round().astype("uint8")
                if self.world.is_main:
                    written.append(write_image(self.root / f"step_{iteration}" / f"{name}.png", image))
                    if self.tb is not None:
                        self.tb.add_image(f"validation/{name}", image, iteration, dataformats="HWC")
        finally:
            if trained is not None:
                self._swap(trained)
            model.train(was_training)
            rng.restore_state(state)
        if self.world.is_main:
            self.logger.info(f"validation at iteration {iteration}: {len(written)} image(s) in "
                             f"{self.root / f'step_{iteration}'}")
        dist.barrier()
        return written
