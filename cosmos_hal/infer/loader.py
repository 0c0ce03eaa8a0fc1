"""Build a diffusers Cosmos pipeline on the cosmos_hal device, with the cosmos_hal attention
processor, unscaled temporal RoPE, and a deterministic conditioning encode.

Sources: a diffusers pipeline folder (``transformer/ vae/ text_encoder/ tokenizer/
scheduler/``, e.g. a nvidia/Cosmos-Predict2-2B-Video2World download), or an NVIDIA checkpoint
(``model-720p-16fps.pt``, a training ``iter_*.pt``) plus a VAE folder and a T5 folder. The DiT
always goes through ``cosmos_hal.models.dit.build_transformer`` (strict key check, named
mismatches); everything else is diffusers' own loading.

Predict2.5 folders (``model_index.json`` naming ``Cosmos2_5_PredictBasePipeline``) load
diffusers' Predict2.5 pipeline; its image-context attention is not used by that pipeline, so
the cosmos_hal processor applies as well.

Predict1 (Cosmos 1.0, see infer/family.py) loads diffusers' ``CosmosTextToWorldPipeline`` /
``CosmosVideoToWorldPipeline`` with their ``EDMEulerScheduler`` (the only sampler they take)
and keeps diffusers' fps-modulated temporal RoPE, which upstream cosmos-predict1 uses too
(``VideoRopePosition3DEmb``: positions / fps * base_fps 24, ``cosmos_predict1/diffusion/module/
position_embedding.py``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cosmos_hal.infer import checks, guardrail, rope_fps
from cosmos_hal.infer.errors import InferenceInputError
from cosmos_hal.infer.family import PREDICT1_PIPELINES, detect_family

log = logging.getLogger(__name__)

TASK_PIPELINES = {
    "video2world": "Cosmos2VideoToWorldPipeline",
    "text2image": "Cosmos2TextToImagePipeline",
}
PREDICT25_PIPELINE = "Cosmos2_5_PredictBasePipeline"
# Which pipeline classes can serve which task.
PIPELINE_TASKS = {
    "Cosmos2VideoToWorldPipeline": "video2world",
    "Cosmos2TextToImagePipeline": "text2image",
    PREDICT25_PIPELINE: "video2world",
    **{name: task for task, name in PREDICT1_PIPELINES.items()},
}
DEFAULT_PRESETS = {
    ("predict2", "video2world"): "predict2-2b", ("predict2", "text2image"): "predict2-2b-t2i",
    ("predict1", "video2world"): "predict1-7b-video2world", ("predict1", "text2world"): "predict1-7b-text2world",
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class LoadOptions:
    """What to load and how; mirrors the CLI flags of ``python -m cosmos_hal infer``."""

    task: str
    model: str
    vae_path: str | None = None
    text_encoder_path: str | None = None
    preset: str | None = None  # DiT shape for an NVIDIA .pt checkpoint
    ema: bool = False  # NVIDIA training checkpoints: take net_ema.* weights
    dtype: str | None = None  # bf16 | fp16 | fp32; default: Backend.default_dtype() (CPU fp32, else bf16)
    processor: str = "hal"  # hal | diffusers
    fps_scaling: bool = False  # diffusers' fps-scaled temporal RoPE (off: as the checkpoints)
    offload: bool = False  # keep text encoder and VAE on the CPU between uses
    guardrail: bool = False
    loras: list = field(default_factory=list)  # adapters.LoraSpec, loaded before placement
    fuse_lora: bool = False
    sampler: str | None = None  # upstream | diffusers; None: upstream (Predict2), the pipeline's own (2.5, 1)
    family: str | None = None  # predict1 | predict2; None: infer/family.py decides it from the model


def resolve_dtype(name: str | None, backend) -> torch.dtype:
    """--dtype, else the backend's default; bf16 only where the backend computes it."""
    if name is None:
        return backend.default_dtype()
    try:
        dtype = DTYPES[name]
    except KeyError:
        raise InferenceInputError(f"--dtype {name!r}: choose one of {', '.join(DTYPES)}") from None
    if dtype == torch.bfloat16 and not backend.supports_bf16():
        raise InferenceInputError(f"--dtype {name}: the {backend.name} backend's device does not support "
                                  "bfloat16; use --dtype fp16 or --dtype fp32")
    return dtype


def pipeline_class_name(model: Path, task: str, family: str = "predict2") -> str:
    """The pipeline class for ``task``; a folder's model_index.json may name Predict2.5's."""
    pipelines = PREDICT1_PIPELINES if family == "predict1" else TASK_PIPELINES
    if task not in pipelines:
        raise InferenceInputError(f"unknown {family} task {task!r}; choose {' or '.join(pipelines)}")
    index = model / "model_index.json" if model.is_dir() else None
    if index is None or not index.is_file():
        return pipelines[task]
    name = json.loads(index.read_text()).get("_class_name", "")
    if name not in PIPELINE_TASKS:
        log.warning("%s names pipeline %r; using %s", index, name, pipelines[task])
        return pipelines[task]
    if PIPELINE_TASKS[name] != task:
        raise InferenceInputError(
            f"--model {model} is a {name} ({PIPELINE_TASKS[name]}) but you asked for {task}; "
            f"run `python -m cosmos_hal infer {PIPELINE_TASKS[name]}` or give a {task} model"
        )
    return name


def _pipeline_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def build_dit(opts: LoadOptions, model: Path, dtype, device):
    """The DiT with strict weight loading (CheckpointMismatchError names every bad key)."""
    from cosmos_hal.models.dit import build_transformer

    if model.is_file():
        preset = opts.preset or DEFAULT_PRESETS[opts.family, opts.task]
        try:
            transformer = build_transformer(preset, weights=model, ema=opts.ema, dtype=dtype, device=device,
                                            install_hal_processor=opts.processor == "hal")
        except KeyError as exc:  # --ema on a file without EMA weights (or only EMA weights without it)
            raise InferenceInputError(f"--model{' --ema' if opts.ema else ''}: {exc.args[0]}") from None
    else:
        if opts.preset:
            log.info("--preset %s ignored: %s/transformer/config.json gives the shape", opts.preset, model)
        transformer = build_transformer(None, weights=model, dtype=dtype, device=device,
                                        install_hal_processor=opts.processor == "hal")
    needs_mask = opts.task == "video2world"
    cfg = transformer.config
    if needs_mask != (cfg.in_channels == cfg.out_channels + 1):
        kind = ("Video2World (in_channels = out_channels + 1)" if needs_mask
                else f"{opts.task} (in_channels = out_channels)")
        raise InferenceInputError(
            f"--model {model}: the DiT has in_channels={cfg.in_channels}, out_channels={cfg.out_channels}, "
            f"but {opts.task} needs a {kind} model"
        )
    transformer.eval().requires_grad_(False)
    return transformer


def _text_encoder_dirs(path: Path) -> tuple[Path, Path]:
    """(encoder folder, tokenizer folder) inside a T5 folder or a pipeline-like folder."""
    enc = path / "text_encoder" if (path / "text_encoder").is_dir() else path
    tok = path / "tokenizer" if (path / "tokenizer").is_dir() else enc
    if not (enc / "config.json").is_file():
        raise InferenceInputError(
            f"--text_encoder_path {path}: no config.json in it or in {path / 'text_encoder'}; give a "
            "T5 encoder folder (e.g. google-t5/t5-11b saved with save_pretrained) with its tokenizer"
        )
    return enc, tok


def load_text_encoder(path: Path, dtype):
    from transformers import AutoTokenizer, T5EncoderModel

    enc, tok = _text_encoder_dirs(path)
    return T5EncoderModel.from_pretrained(enc, dtype=dtype), AutoTokenizer.from_pretrained(tok)


def default_scheduler(family: str = "predict2"):
    """The sampler diffusers' conversion script saves with the pipeline: Predict2's flow-matching
    Euler (the pipelines add sigma_max 80, sigma_min 0.002, sigma_data 1 to its config), or
    Predict1's EDM Euler (``save_pipeline_cosmos_1_0``: Karras sigmas 0.002 ... 80, rho 7,
    sigma_data 0.5, epsilon prediction)."""
    from diffusers import EDMEulerScheduler, FlowMatchEulerDiscreteScheduler

    if family == "predict1":
        return EDMEulerScheduler(sigma_min=0.002, sigma_max=80, sigma_data=0.5, sigma_schedule="karras",
                                 num_train_timesteps=1000, prediction_type="epsilon", rho=7.0,
                                 final_sigmas_type="sigma_min")
    return FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)


def use_posterior_mean(vae) -> None:
    """Make ``vae.encode`` return a posterior whose ``sample()`` is its mean.

    Cosmos2VideoToWorldPipeline samples the conditioning latents from the VAE posterior
    with the device generator (different numbers per backend); upstream cosmos-predict2 and
    cosmos_hal training use the mean. The mean makes the conditioning deterministic and the
    same on every backend."""
    if getattr(vae, "_cosmos_hal_mean_encode", False):
        return
    encode = vae.encode

    def encode_mean(x, return_dict: bool = True):
        out = encode(x, return_dict=True)
        dist = out.latent_dist
        dist.sample = lambda generator=None: dist.mode()
        return out if return_dict else (dist,)

    vae.encode = encode_mean
    vae._cosmos_hal_mean_encode = True


def load_pipeline(opts: LoadOptions, backend=None):
    """A ready pipeline: components in ``opts.dtype`` on ``backend``'s device (or offloaded)."""
    from cosmos_hal.backend import current
    from cosmos_hal.infer.sampler import use_sampler

    backend = backend or current()
    model = checks.check_model_source(opts.model, opts.vae_path, opts.text_encoder_path)
    dtype = resolve_dtype(opts.dtype, backend)
    device = backend.device(0)
    if opts.family is None:
        opts.family = detect_family(opts.task, model, opts.preset)
    name = pipeline_class_name(model, opts.task, opts.family)
    sampler = resolve_sampler(name, opts.sampler)
    cls = _pipeline_class(name)
    checker = guardrail.safety_checker(opts.guardrail)
    place = torch.device("cpu") if opts.offload else device

    transformer = build_dit(opts, model, dtype, place)
    components = {"transformer": transformer, "safety_checker": checker}
    if opts.vae_path is not None:
        from cosmos_hal.models.vae import build_vae

        try:
            components["vae"] = build_vae(opts.vae_path, dtype=dtype)
        except FileNotFoundError as exc:
            raise InferenceInputError(f"--vae_path: {exc}") from None
    if opts.text_encoder_path is not None:
        components["text_encoder"], components["tokenizer"] = load_text_encoder(Path(opts.text_encoder_path), dtype)

    if model.is_file():
        components.setdefault("scheduler", default_scheduler(opts.family))
        pipe = cls(**components)
    else:
        pipe = cls.from_pretrained(model, dtype=dtype, **components)
    pipe.vae.eval().requires_grad_(False)
    pipe.text_encoder.eval().requires_grad_(False)
    use_posterior_mean(pipe.vae)
    use_sampler(pipe, sampler)
    if not opts.fps_scaling and opts.family == "predict2":  # Predict1 was trained with it (module doc)
        rope_fps.disable_fps_scaling(pipe.transformer)
    if opts.loras:  # before offload hooks or device moves are attached
        from cosmos_hal.infer.adapters import load_loras

        load_loras(pipe.transformer, opts.loras, fuse=opts.fuse_lora)

    if opts.offload and backend.is_accelerator():
        place_offloaded(pipe, device)
    else:
        if opts.offload:
            log.info("--offload has no effect on the %s backend (no device memory apart from the host's)",
                     backend.name)
        pipe.to(device)
    pipe.cosmos_hal_backend = backend
    return pipe


def resolve_sampler(pipeline_name: str, sampler: str | None) -> str:
    """Predict2 pipelines: cosmos-predict2's sampler unless ``sampler`` says "diffusers".
    Predict2.5 keeps its UniPC scheduler (the upstream AB2 form is Predict2's)."""
    from cosmos_hal.infer.sampler import DEFAULT_SAMPLER, check_sampler

    if sampler is not None:
        check_sampler(sampler)
    own = {PREDICT25_PIPELINE: "a Predict2.5 model samples with its own UniPC scheduler"}
    own.update({p: "a Predict1 model samples with its own EDM Euler scheduler" for p in PREDICT1_PIPELINES.values()})
    if pipeline_name not in own:
        return sampler or DEFAULT_SAMPLER
    if sampler not in (None, "diffusers"):
        raise InferenceInputError(f"--sampler {sampler}: {own[pipeline_name]}; drop --sampler or pass --sampler diffusers")
    return "diffusers"


def place_offloaded(pipe, device) -> None:
    """diffusers' model CPU offload: each of text encoder, DiT and VAE sits on the device only
    while it runs (needs the accelerate package)."""
    if importlib.util.find_spec("accelerate") is None:
        raise InferenceInputError("--offload needs the accelerate package: pip install accelerate")
    pipe.enable_model_cpu_offload(device=device)
