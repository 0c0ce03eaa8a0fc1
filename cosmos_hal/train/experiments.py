"""Experiments: dataclass configs in a registry, selected by name, changed by ``key=value``.

Why dataclasses: every knob has one typed home, ``key=value`` overrides are checked against
the field's type, and an unknown key or experiment fails with the list of valid ones.
Upstream's (NVIDIA cosmos-predict2 1.0.9, configs/base/experiment/cosmos_nemo_assets*.py)
hyper-parameters are copied here as values, with the file they came from named.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# The parser moved to train/overrides.py; ExperimentError is re-exported for the modules that import it here.
from cosmos_hal.train.overrides import ExperimentError, check_ranges, set_fields, valid_keys  # noqa: F401
from cosmos_hal.train.overrides import Range as _Range


def power_ema_gamma(rate: float = 0.10) -> float:
    """Upstream's EMA exponent from its "rate" s: the largest real root of
    x^3 + 7x^2 + (16 - s^-2)x + (12 - s^-2) (Karras et al. 2024); 6.9372 for s = 0.1."""
    roots = np.roots([1.0, 7.0, 16.0 - rate**-2, 12.0 - rate**-2])
    return float(roots.real.max())


@dataclass
class OptimConfig:
    """AdamW (upstream: fused AdamW, betas (0.9, 0.99), eps 1e-8, grad clip 1.0).
    zero_nonfinite_grads: set NaN/inf gradient elements to 0 before clipping, as upstream's
    GradClip callback (force_finite=True, callbacks/grad_clip.py); the log counts them.
    name: adamw (the backend's fused AdamW, fp32 moments) | adamw_bf16 (moments stored in bf16) |
    adamw_8bit (blockwise 8-bit moments as bitsandbytes); train/optim.py, docs/training.md "Memory"."""

    name: str = "adamw"
    lr: float = 2**-14.5
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    grad_clip: float = 1.0
    zero_nonfinite_grads: bool = True


@dataclass
class ScheduleConfig:
    """Upstream's LambdaLinearScheduler: lr = optim.lr * f(n); f rises linearly from f_start
    to f_max over warmup_steps, then falls linearly to f_min at cycle_length (0: max_iter).
    per_process: n counts iterations x data-parallel processes, as a diffusers recipe's
    scheduler under accelerate advances (AcceleratedScheduler.step steps num_processes times
    per optimizer step); else n counts iterations (upstream's trainer)."""

    warmup_steps: int = 0
    f_start: float = 1e-6
    f_max: float = 1.0
    f_min: float = 0.0
    cycle_length: int = 0
    per_process: bool = False


@dataclass
class LossConfig:
    """Training objective. ``recipe`` is "predict2" (rectified-flow x0 loss of cosmos-predict2
    1.0.9), "predict2.5" (diffusers' Predict2.5 LoRA recipe: velocity target, shift 5) or
    "predict1" (cosmos-predict1's EDM loss with the learned log-variance; train/loss.py)."""

    recipe: str = "predict2"
    loss_scale: float = 10.0
    high_sigma_ratio: float = 0.05
    adjust_video_noise: bool = True
    min_cond_frames: int = 1
    max_cond_frames: int = 2
    sigma_conditional: float = 1e-4
    text_dropout: float = 0.2
    shift: float = 5.0
    cond_timestep: float = 1e-4
    # Under precision=bf16 the DiT gets its timestep in bfloat16, as upstream's denoise casts it
    # (pipelines/video2world.py, text2image.py: ``c_noise.to(**self.tensor_kwargs)``); diffusers'
    # Predict2.5 recipe passes float32 (false in the GR1 experiments).
    bf16_timestep: bool = True
    # predict1 (cosmos-predict1 training/config/base/model.py DefaultModelConfig, EDMSDE, and the
    # video_cond_bool settings of its video2world experiments): log sigma ~ N(p_mean, p_std);
    # sigma_data of the EDM preconditioning (models/vae gives latents already times it);
    # logvar: the learned-uncertainty term (loss_add_logvar); the
    # conditioning frames are noised by an augment sigma, log ~ N(augment_p_mean, augment_p_std)
    # times augment_multiplier; cond_dropout: probability of zeroing them (video_cond_bool dropout_rate)
    p_mean: float = 0.0
    p_std: float = 1.0
    sigma_data: float = 0.5
    logvar: bool = True
    augment_p_mean: float = -3.0
    augment_p_std: float = 2.0
    augment_multiplier: float = 1.0
    cond_dropout: float = 0.0


@dataclass
class EMAConfig:
    """Power EMA of the weights, kept in fp32 (upstream PowerEMAConfig: rate 0.1)."""

    enabled: bool = True
    gamma: float = field(default_factory=power_ema_gamma)
    iteration_shift: int = 0


@dataclass
class LoraConfig:
    """Adapters through peft (models/lora.py). kind: none | lora | dora | lokr.
    factor: LoKr's decompose factor (seed 002 uses 4; -1 = near square). init: peft (peft's
    default, kaiming-uniform lora_A, as upstream) | gaussian (lora_A ~ N(0, 1/rank); LoRA/DoRA)."""

    kind: str = "none"
    rank: int = 16
    alpha: int = 16
    target_modules: str = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2"
    factor: int = -1
    init: str = "peft"
    # adapt only transformer_blocks 0..first_nblocks-1 (0: every block), as cosmos-predict1's
    # get_fa_ca_qv_lora_config(first_nblocks=28) (training/utils/peft/lora_config.py)
    first_nblocks: int = 0


@dataclass
class DataConfig:
    """Where samples come from. synthetic=True builds a small dataset under the output
    directory on first use (the tiny experiments)."""

    layout: str = "auto"
    num_frames: int = 93
    height: int = 704
    width: int = 1280
    num_workers: int = 2
    skip_bad_samples: bool = True
    latent_cache: bool = False
    synthetic: bool = False
    synthetic_videos: int = 8
    fps: int = 16
    # stretch: resize to exactly height x width, as upstream (data/dataset_utils.py Resize_Preprocess)
    # and diffusers' recipe (VideoProcessor.preprocess_video) do; crop: keep the aspect, centre-crop
    resize_mode: str = "stretch"
    # image_folder layout (SimpleTuner's flat folder; data/image_folder.py, docs/data.md "Image folders"):
    # captions from textfile (<name>.txt) | filename (underscores -> spaces) | instanceprompt (instance_prompt)
    caption_strategy: str = "textfile"
    instance_prompt: str = ""
    # T5 encoder for the caption cache: a T5 folder or a pipeline folder; empty: model_path's text_encoder/
    text_encoder_path: str = ""
    text_cache_dir: str = ""  # empty: <dataset_path>/t5_cache (image folders), else <output_dir>/t5_cache
    # aspect-ratio buckets at about height x width pixels (SimpleTuner's resolution_type=pixel_area);
    # false: every image resized to height x width by resize_mode
    buckets: bool = True


@dataclass
class CheckpointConfig:
    """How checkpoints are written (train/checkpoint.py, docs/training.md "Checkpoints and resume").
    format: full (portable torch files gathered on rank 0's host: what inference and the tools
    read) | sharded (torch.distributed.checkpoint: each rank writes its own shards, nothing is
    gathered). Resume reads either; tools/convert_checkpoint.py converts between them."""

    format: str = "full"


@dataclass
class Experiment:
    name: str = ""
    task: str = "video2world"  # video2world | text2world (video, no conditioning frames; Predict1) | text2image
    preset: str = "tiny"
    model_path: str = ""  # diffusers directory or NVIDIA .pt; empty: random weights
    vae_path: str = ""  # diffusers AutoencoderKLWan directory; empty: the preset's VAE, random
    dataset_path: str = ""
    output_dir: str = ""  # empty: output/<name>
    seed: int = 0
    max_iter: int = 1000
    save_iter: int = 500
    logging_iter: int = 10
    keep_last: int = 2
    save_at_end: bool = True  # also checkpoint after the last iteration (off for benchmarks)
    batch_size: int = 1  # per process
    grad_accum: int = 1
    precision: str = "bf16"  # bf16 (autocast, fp32 master weights) | fp32
    parallelism: str = "fsdp"  # fsdp | ddp (ignored on one process)
    activation_checkpointing: bool = True
    # The training fast path: auto (each part the backend has proven on real hardware:
    # Backend.proven_fast_path), on (every part), off (the plain path). An explicit
    # fast_attention= / compile= / ac_mode= below wins over it (None: follow `fast`).
    fast: str = "auto"
    # full | selective (keeps self-attention outputs) | selective_mm (also wide matmul outputs) |
    # auto (per block, sized to the device's free memory; refined after iteration 1): docs/benchmarks.md
    ac_mode: str | None = None
    fast_attention: bool | None = None  # FastCosmosAttnProcessor (fused QK-norm + RoPE; train/fast_attention.py)
    # ranks that split one sample's video tokens (Ulysses, train/context_parallel.py); 1 = off;
    # 0 = auto: upstream_context_parallel where the process count allows (resolve_context_parallel),
    # so the global batch is upstream's on the same GPU count
    context_parallel: int = 0
    upstream_context_parallel: int = 1  # NVIDIA's model_parallel.context_parallel_size for this recipe
    # benchmarks only: build the first N transformer blocks of the preset (0: all); per-block memory
    # and time come from two such runs (tools/gpu_suite.sh blocks14b); no released weights fit
    num_layers: int = 0
    compile: bool | None = None
    parity: bool = False  # deterministic algorithms + fixed data order
    resume: bool = True
    # where the training state lives (train/memory_plan.py, docs/training.md "Memory"): auto (on the
    # device if the estimate fits, else the first offload that does; else stop with what would fit) |
    # device | offload_optimizer (AdamW moments in host memory, stepped there) | offload_params
    # (FSDP2 CPUOffloadPolicy: weights, grads and moments in host memory, one block on the device)
    memory: str = "auto"
    # plan and run as if the device had only this many GiB (0: the whole device); also caps the
    # allocator (Backend.set_memory_fraction), so a big card behaves like a smaller one
    memory_cap_gb: float = 0.0
    # stop before training when the memory estimate does not fit (false: start anyway)
    memory_check: bool = True
    # seconds a collective may wait for the other ranks before this rank stops with an error
    # naming the ones that went silent (gloo, NCCL and HCCL alike; docs/training.md "Stopping a run")
    dist_timeout: float = 1800.0
    # Text2Image validation during training (train/validation.py): every validation_every iterations
    # (0: off) the prompts are rendered at data.height x data.width with the EMA (or adapter) weights into
    # <output_dir>/validation/step_N/. validation_prompts: one prompt, several separated by "|", or a
    # .json prompt library {"nickname": "prompt"} (SimpleTuner's validation_prompt_library format)
    validation_every: int = 0
    validation_prompts: str = ""
    validation_negative_prompt: str = ""
    validation_steps: int = 20  # sampler steps (SimpleTuner's validation_num_inference_steps)
    validation_guidance: float = 7.0  # classifier-free guidance (the Cosmos2 pipelines' default; seed 002 uses 4)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def resolved_output_dir(self) -> str:
        return self.output_dir or f"output/{self.name}"

    def cycle_length(self) -> int:
        return self.schedule.cycle_length or self.max_iter


EXPERIMENTS: dict[str, Callable[[], Experiment]] = {}
DEFAULT_EXPERIMENT = "tiny_video2world_synthetic"


def register(fn: Callable[[], Experiment]) -> Callable[[], Experiment]:
    """Register a factory under its function name (which is the experiment's name)."""
    EXPERIMENTS[fn.__name__] = fn
    return fn


def names() -> list[str]:
    return sorted(EXPERIMENTS)


def get(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """The experiment called ``name`` with ``key=value`` overrides applied."""
    if name not in EXPERIMENTS:
        raise ExperimentError(f"unknown experiment {name!r}; known experiments:\n  " + "\n  ".join(names()))
    exp = EXPERIMENTS[name]()
    exp.name = name
    return apply_overrides(exp, overrides)


# -- overrides: parsed by train/overrides.py, checked here ----------------------------------------


def apply_overrides(exp: Experiment, overrides) -> Experiment:
    """A copy of ``exp`` with ``key=value`` overrides applied and validated."""
    exp = set_fields(exp, overrides)
    validate(exp)
    return exp


_CHOICES = {
    "task": ("video2world", "text2world", "text2image"),
    "precision": ("bf16", "fp32"),
    "parallelism": ("fsdp", "ddp"),
    "ac_mode": (None, "full", "selective", "selective_mm", "auto"),
    "fast": ("auto", "on", "off"),
    "memory": ("auto", "device", "offload_optimizer", "offload_params"),
}


_PROBABILITY, _POSITIVE, _NON_NEGATIVE, _COUNT = _Range(0, 1), _Range(0, lo_open=True), _Range(0), _Range(1)
_FINITE = _Range(-math.inf)
# Ranges of the numeric hyper-parameters, checked at `train --check` so a bad value stops before any
# process starts (torch's AdamW would refuse lr < 0 only inside the ranks). Each tuple: range, hint.
_RANGES: dict[str, tuple[_Range, str]] = {
    "optim.lr": (_NON_NEGATIVE, ""),
    "optim.weight_decay": (_NON_NEGATIVE, ""),
    "optim.betas": (_Range(0, 1, hi_open=True), "each of the two"),
    "optim.eps": (_POSITIVE, ""),
    "optim.grad_clip": (_NON_NEGATIVE, "optim.grad_clip=0 turns clipping off"),
    "schedule.warmup_steps": (_NON_NEGATIVE, ""),
    "schedule.f_start": (_NON_NEGATIVE, "a factor of optim.lr"),
    "schedule.f_max": (_NON_NEGATIVE, "a factor of optim.lr"),
    "schedule.f_min": (_NON_NEGATIVE, "a factor of optim.lr"),
    "schedule.cycle_length": (_NON_NEGATIVE, "schedule.cycle_length=0 means max_iter"),
    "loss.loss_scale": (_POSITIVE, ""),
    "loss.high_sigma_ratio": (_PROBABILITY, "a probability"),
    "loss.min_cond_frames": (_NON_NEGATIVE, ""),  # >= 1 except for recipe predict1 (validate)
    "loss.max_cond_frames": (_COUNT, ""),
    "loss.sigma_conditional": (_NON_NEGATIVE, ""),
    "loss.text_dropout": (_PROBABILITY, "a probability"),
    "loss.shift": (_POSITIVE, ""),
    "loss.cond_timestep": (_PROBABILITY, "a flow-matching time"),
    "loss.p_mean": (_FINITE, "the mean of log sigma"),
    "loss.p_std": (_POSITIVE, "the standard deviation of log sigma"),
    "loss.sigma_data": (_POSITIVE, ""),
    "loss.augment_p_mean": (_FINITE, "the mean of the conditioning frames' log augment sigma"),
    "loss.augment_p_std": (_POSITIVE, ""),
    "loss.augment_multiplier": (_POSITIVE, ""),
    "loss.cond_dropout": (_PROBABILITY, "a probability"),
    "ema.gamma": (_NON_NEGATIVE, "the power EMA's exponent"),
    "ema.iteration_shift": (_NON_NEGATIVE, ""),
    "lora.rank": (_COUNT, ""),
    "lora.alpha": (_POSITIVE, ""),
    "lora.first_nblocks": (_NON_NEGATIVE, "lora.first_nblocks=0 adapts every block"),
    "data.num_frames": (_COUNT, ""),
    "data.height": (_COUNT, ""),
    "data.width": (_COUNT, ""),
    "data.num_workers": (_NON_NEGATIVE, "data.num_workers=0 loads in the training process"),
    "data.synthetic_videos": (_COUNT, ""),
    "data.fps": (_POSITIVE, ""),
}


def _check_ranges(exp: Experiment) -> None:
    """Raise ExperimentError for the first value of _RANGES outside its range, with the
    experiment's own value to type instead."""
    check_ranges(exp, _RANGES, lambda: EXPERIMENTS[exp.name]() if exp.name in EXPERIMENTS else Experiment(),
                 exp.name or "the default")



def _validate_image_training(exp: Experiment) -> None:
    """The image-folder and validation settings (docs/data.md "Image folders", docs/training.md "Validation")."""
    d = exp.data
    if d.caption_strategy not in ("textfile", "filename", "instanceprompt"):
        raise ExperimentError(f"data.caption_strategy={d.caption_strategy!r}: choose textfile (<name>.txt beside each "
                              "image), filename (the file name, underscores as spaces) or instanceprompt")
    if d.caption_strategy == "instanceprompt" and not d.instance_prompt.strip():
        raise ExperimentError('data.caption_strategy=instanceprompt needs data.instance_prompt="<the prompt for '
                              'every image>"')
    if d.instance_prompt.strip() and d.caption_strategy != "instanceprompt":  # silently unused otherwise
        raise ExperimentError(f"data.instance_prompt is set but data.caption_strategy={d.caption_strategy} does not "
                              "use it: add data.caption_strategy=instanceprompt to caption every image with it "
                              "(SimpleTuner's --caption_strategy=instanceprompt), or drop data.instance_prompt")
    if d.layout == "image_folder" and exp.task != "text2image":
        raise ExperimentError(f"data.layout=image_folder trains Text2Image; task={exp.task} needs videos (nemo, gr1)")
    if exp.validation_every < 0:
        raise ExperimentError(f"validation_every={exp.validation_every}: give iterations between validations "
                              "(e.g. validation_every=500) or 0 (off)")
    if exp.validation_steps < 1:
        raise ExperimentError(f"validation_steps={exp.validation_steps}: need at least 1 sampler step (e.g. 20)")
    if exp.validation_every > 0 and exp.task != "text2image":
        raise ExperimentError(f"validation_every={exp.validation_every}: validation renders Text2Image only; "
                              f"task={exp.task} needs validation_every=0")
    if exp.validation_every > 0 and not exp.validation_prompts.strip():
        raise ExperimentError(f'validation_every={exp.validation_every} needs validation_prompts="a prompt" '
                              '(several separated by "|", or a .json prompt library)')
    library = exp.validation_prompts.strip()
    if exp.validation_every > 0 and library.endswith(".json") and not os.path.isfile(library):
        raise ExperimentError(f"validation_prompts={library}: no such prompt library (a JSON file "
                              '{"nickname": "prompt", ...}); give its path, or the prompts separated by "|"')


def validate(exp: Experiment) -> None:
    _check_ranges(exp)
    for key, choices in _CHOICES.items():
        if getattr(exp, key) not in choices:
            raise ExperimentError(f"{key}={getattr(exp, key)!r}: choose one of "
                                  f"{', '.join(c for c in choices if c is not None)}")
    if exp.data.layout not in ("auto", "nemo", "gr1", "image", "image_folder"):
        raise ExperimentError(f"data.layout={exp.data.layout!r}: choose auto (by what the folder holds), nemo, gr1, "
                              "image or image_folder")
    _validate_image_training(exp)
    if exp.num_layers < 0:
        raise ExperimentError(f"num_layers={exp.num_layers}: give a block count (e.g. num_layers=4) or 0 for every block")
    if exp.num_layers and exp.model_path:
        raise ExperimentError(f"num_layers={exp.num_layers} builds a cut model for benchmarks; released weights "
                              f"(model_path={exp.model_path}) hold every block: drop num_layers= or model_path=")
    if exp.optim.name not in ("adamw", "adamw_bf16", "adamw_8bit"):
        raise ExperimentError(f"optim.name={exp.optim.name!r}: choose adamw (fp32 moments), adamw_bf16 or adamw_8bit")
    if not (exp.memory_cap_gb >= 0 and math.isfinite(exp.memory_cap_gb)):
        raise ExperimentError(f"memory_cap_gb={exp.memory_cap_gb}: give GiB (e.g. memory_cap_gb=24) or 0 for the "
                              "whole device")
    if exp.data.resize_mode not in ("stretch", "crop"):
        raise ExperimentError(f"data.resize_mode={exp.data.resize_mode!r}: choose stretch (upstream) or crop")
    if exp.loss.recipe not in ("predict2", "predict2.5", "predict1"):
        raise ExperimentError(f"loss.recipe={exp.loss.recipe!r}: choose predict2, predict2.5 or predict1")
    if exp.lora.kind not in ("none", "lora", "dora", "lokr"):
        raise ExperimentError(f"lora.kind={exp.lora.kind!r}: choose none, lora, dora or lokr")
    if exp.lora.init not in ("peft", "gaussian") or (exp.lora.init == "gaussian" and exp.lora.kind == "lokr"):
        raise ExperimentError(f"lora.init={exp.lora.init!r} with lora.kind={exp.lora.kind}: choose peft "
                              "(peft's default init), or gaussian for lora/dora")
    if exp.checkpoint.format not in ("full", "sharded"):
        raise ExperimentError(f"checkpoint.format={exp.checkpoint.format!r}: choose full (portable files, the "
                              "default) or sharded (torch.distributed.checkpoint, no gather on rank 0)")
    if exp.lora.factor == 0 or exp.lora.factor < -1:
        raise ExperimentError(f"lora.factor={exp.lora.factor}: give LoKr's decompose factor (e.g. lora.factor=4) "
                              "or -1 (near-square factors)")
    for key in ("max_iter", "batch_size", "grad_accum", "logging_iter", "save_iter"):
        if getattr(exp, key) < 1:
            raise ExperimentError(f"{key}={getattr(exp, key)} must be at least 1")
    lowest = 0 if exp.loss.recipe == "predict1" else 1  # predict1's first_random_n draws from 0 (no conditioning)
    if not lowest <= exp.loss.min_cond_frames <= exp.loss.max_cond_frames:
        raise ExperimentError(f"loss.min_cond_frames={exp.loss.min_cond_frames}: need {lowest} <= loss.min_cond_frames "
                              f"<= loss.max_cond_frames ({exp.loss.max_cond_frames}) for loss.recipe={exp.loss.recipe}")
    if not exp.dist_timeout > 0:
        raise ExperimentError(f"dist_timeout={exp.dist_timeout}: give the collective timeout in seconds, "
                              f"e.g. dist_timeout=1800 (the default) or dist_timeout=300 to fail fast")
    if exp.context_parallel < 0 or exp.upstream_context_parallel < 1:
        raise ExperimentError(f"context_parallel={exp.context_parallel}: use 0 (auto, upstream's value), 1 (off) "
                              "or the number of ranks that split each sample")
    if exp.context_parallel > 1 and exp.fast_attention is False:
        raise ExperimentError(f"context_parallel={exp.context_parallel} needs fast_attention=true (its processor does "
                              "the all-to-alls around the attention kernel)")


def resolve_context_parallel(exp: Experiment, world_size: int) -> tuple[Experiment, str]:
    """``exp`` with ``context_parallel=0`` (auto) decided for ``world_size`` processes, and a log
    line that states the global batch.

    Why: upstream's nemo_assets Video2World experiments split each sample over 2 (2B) or 8 (14B)
    ranks, so N GPUs train N/2 (N/8) samples per step. Auto uses the same split, so the global
    batch, and with it the loss curve per iteration, is upstream's on the same GPU count. Where
    the split does not divide the process count (upstream would refuse to start), it takes the
    largest that does, gcd(upstream, processes), and the line says so."""
    exp = copy.deepcopy(exp)
    up, note = exp.upstream_context_parallel, ""
    if exp.context_parallel == 0:
        exp.context_parallel = math.gcd(up, world_size)
        if exp.context_parallel > 1 and exp.fast_attention is False:
            raise ExperimentError(
                f"fast_attention=false: this experiment splits each sample over {exp.context_parallel} ranks by "
                f"default (context_parallel auto, upstream's {up}), which needs fast_attention=true; pass "
                f"context_parallel=1 too (global batch then {exp.batch_size * exp.grad_accum * world_size})")
        if up > 1:
            note = f"; auto: upstream's {up}" + (f", which does not divide {world_size}" if exp.context_parallel != up else "")
    validate(exp)
    dp = world_size // exp.context_parallel if world_size % exp.context_parallel == 0 else 0
    line = (f"global batch {exp.batch_size * exp.grad_accum * dp} samples per iteration = batch_size "
            f"{exp.batch_size} x grad_accum {exp.grad_accum} x {dp} data-parallel ranks ({world_size} "
            f"process{'es' if world_size != 1 else ''} / context_parallel {exp.context_parallel}{note})")
    if up > 1:
        theirs = f"{world_size // up}" if world_size % up == 0 else f"none (it needs a multiple of {up} GPUs)"
        line += f"; upstream's trainer (context parallel {up}) on {world_size} GPUs: {theirs}"
    return exp, line


FAST_PARTS = ("fast_attention", "compile", "ac_auto")


def resolve_fast_path(exp: Experiment, proven: frozenset[str] | set[str]) -> tuple[Experiment, str]:
    """``exp`` with fast_attention, compile and ac_mode decided, and a line for the log.

    ``fast=auto`` turns on the parts in ``proven`` (the backend's ``proven_fast_path()``),
    ``fast=on`` all of them, ``fast=off`` none; a value the user set explicitly always wins.
    context_parallel > 1 needs the fast processor, so it turns fast_attention on."""
    wanted = {"auto": set(proven), "on": set(FAST_PARTS), "off": set()}[exp.fast]
    exp = copy.deepcopy(exp)
    explicit = [k for k in ("fast_attention", "compile", "ac_mode") if getattr(exp, k) is not None]
    if exp.fast_attention is None:
        exp.fast_attention = "fast_attention" in wanted or exp.context_parallel > 1
    if exp.compile is None:
        exp.compile = "compile" in wanted
    if exp.ac_mode is None:
        exp.ac_mode = "auto" if "ac_auto" in wanted else "full"
    validate(exp)
    parts = (f"fast_attention={str(exp.fast_attention).lower()} compile={str(exp.compile).lower()} "
             f"ac_mode={exp.ac_mode if exp.activation_checkpointing else 'off'}")
    why = {"auto": "proven on this backend: " + (", ".join(sorted(proven)) or "none"),
           "on": "fast=on", "off": "fast=off"}[exp.fast]
    line = f"fast path ({why}): {parts}" + (f" (set explicitly: {', '.join(explicit)})" if explicit else "")
    if exp.fast == "auto" and set(proven) != set(FAST_PARTS):
        line += "; fast=on turns on the rest, fast=off none"
    return exp, line


# -- upstream experiments ---------------------------------------------------------------------
# cosmos_predict2 1.0.9 configs/base/experiment/cosmos_nemo_assets.py: lambdalinear scheduler
# with warm_up_steps [0], cycle_lengths [1000], f_min 0 and f_max as below; fused AdamW
# (defaults/optimizer.py: wd 0.1, betas (0.9, 0.99), eps 1e-8); EMA on; FSDP; batch 1.


def _nemo_video(preset: str, f_max: float, weight_decay: float) -> Experiment:
    # model_parallel.context_parallel_size: 2 (2B), 8 (14B), in cosmos_nemo_assets.py and _lora.py
    return Experiment(
        task="video2world", preset=preset, max_iter=1000, save_iter=500, logging_iter=10,
        upstream_context_parallel=8 if "14b" in preset else 2,
        optim=OptimConfig(lr=2**-14.5, weight_decay=weight_decay),
        schedule=ScheduleConfig(warmup_steps=0, f_max=f_max, f_min=0.0, cycle_length=1000),
        data=DataConfig(num_frames=93, height=704, width=1280, layout="nemo"),
    )


def _nemo_image(preset: str, lr: float, f_max: float, weight_decay: float) -> Experiment:
    return Experiment(
        task="text2image", preset=preset, max_iter=1000, save_iter=500, logging_iter=10,
        optim=OptimConfig(lr=lr, weight_decay=weight_decay),
        schedule=ScheduleConfig(warmup_steps=0, f_max=f_max, f_min=0.0, cycle_length=1000),
        loss=LossConfig(high_sigma_ratio=0.0),
        data=DataConfig(num_frames=1, height=768, width=1360, layout="image"),
    )


@register
def predict2_video2world_training_2b_cosmos_nemo_assets() -> Experiment:
    return _nemo_video("predict2-2b", f_max=0.6, weight_decay=0.1)


@register
def predict2_video2world_training_14b_cosmos_nemo_assets() -> Experiment:
    return _nemo_video("predict2-14b", f_max=0.25, weight_decay=0.2)


@register
def predict2_text2image_training_2b_cosmos_nemo_assets() -> Experiment:
    return _nemo_image("predict2-2b-t2i", lr=2**-15, f_max=0.17, weight_decay=0.1)


@register
def predict2_text2image_training_14b_cosmos_nemo_assets() -> Experiment:
    return _nemo_image("predict2-14b-t2i", lr=2**-14.5, f_max=0.4, weight_decay=0.2)


# cosmos_nemo_assets_lora.py: rank/alpha 16 (2B) and 32 (14B), save every 200 iterations.
@register
def predict2_video2world_lora_training_2b_cosmos_nemo_assets() -> Experiment:
    exp = _nemo_video("predict2-2b", f_max=0.6, weight_decay=0.1)
    exp.save_iter = 200
    exp.lora = LoraConfig(kind="lora", rank=16, alpha=16)
    return exp


@register
def predict2_video2world_lora_training_14b_cosmos_nemo_assets() -> Experiment:
    exp = _nemo_video("predict2-14b", f_max=0.25, weight_decay=0.2)
    exp.save_iter = 200
    exp.lora = LoraConfig(kind="lora", rank=32, alpha=32)
    return exp


# Predict2.5 GR1 post-training, diffusers examples/cosmos/train_cosmos_predict25_lora.py (seed 000;
# argparse defaults of diffusers commit 4ca86332): velocity loss with shift 5 and fp32 timestep;
# torch.optim.AdamW(lr 2^-14.5, wd 1e-3) with torch's default betas (0.9, 0.999), eps 1e-8, clip 1.0;
# get_linear_schedule_with_warmup(warm-up 1000 from 0 to f_max 0.5, then down to f_min 0.2 at
# 100000), stepped by accelerate once per process per optimizer step (schedule.per_process).
def _gr1(kind: str, rank: int) -> Experiment:
    return Experiment(
        task="video2world", preset="predict2.5-2b", max_iter=1000, save_iter=500, logging_iter=10,
        parallelism="ddp",
        optim=OptimConfig(lr=2**-14.5, weight_decay=1e-3, betas=(0.9, 0.999)),
        schedule=ScheduleConfig(warmup_steps=1000, f_start=0.0, f_max=0.5, f_min=0.2, cycle_length=100000,
                                per_process=True),
        loss=LossConfig(recipe="predict2.5", loss_scale=1.0, bf16_timestep=False),
        lora=LoraConfig(kind=kind, rank=rank, alpha=rank),
        ema=EMAConfig(enabled=False),
        data=DataConfig(num_frames=93, height=432, width=768, layout="gr1"),
    )


@register
def predict25_video2world_lora_rank8_gr1() -> Experiment:
    return _gr1("lora", 8)


@register
def predict25_video2world_lora_rank32_gr1() -> Experiment:
    return _gr1("lora", 32)


@register
def predict25_video2world_dora_rank8_gr1() -> Experiment:
    return _gr1("dora", 8)


@register
def predict25_video2world_dora_rank32_gr1() -> Experiment:
    return _gr1("dora", 32)


# -- tiny experiments: the CPU default ----------------------------------------------------------


def _tiny(task: str) -> Experiment:
    """Quick everywhere: no compile or memory probe (fast=off) for a model of a few MB."""
    video = task == "video2world"
    return Experiment(
        task=task, preset="tiny" if video else "tiny-t2i", max_iter=60, save_iter=30, logging_iter=5, keep_last=2,
        fast="off",
        batch_size=4, precision="fp32", parallelism="ddp", activation_checkpointing=False,
        optim=OptimConfig(lr=2e-3, weight_decay=0.1),
        schedule=ScheduleConfig(warmup_steps=5, f_start=0.1, f_max=1.0, f_min=0.1),
        loss=LossConfig(high_sigma_ratio=0.05 if video else 0.0, text_dropout=0.2),
        data=DataConfig(num_frames=9 if video else 1, height=32, width=32, layout="nemo" if video else "image",
                        num_workers=0, synthetic=True, synthetic_videos=8, latent_cache=True),
    )


@register
def tiny_video2world_synthetic() -> Experiment:
    return _tiny("video2world")


@register
def tiny_text2image_synthetic() -> Experiment:
    return _tiny("text2image")


# -- SimpleTuner's Cosmos2 Predict (Image) LoKr quick start (seed 002) ---------------------------
# config.json: lora_type lycoris (lycoris_config: algo lokr, factor 4, linear_dim 10000, linear_alpha 1,
# full_matrix, Attention modules), learning_rate 6e-5, lr_scheduler constant with lr_warmup_steps 100,
# max_train_steps 10000, checkpoint_step_interval 500, use_ema, train_batch_size 1, seed 42, bf16,
# gradient_checkpointing; validation_step_interval 500, validation_guidance 4.0,
# validation_num_inference_steps 20, validation_prompt / validation_negative_prompt as below;
# multidatabackend.json: resolution 1024 with resolution_type pixel_area (1024 x 1024 pixels of area).
# The DiT is upstream's Text2Image 2B (preset predict2-2b-t2i); the loss is upstream's Text2Image one; weight
# decay, betas and grad clip (which the seed does not state) are upstream's.


def _image_folder_lokr(preset: str) -> Experiment:
    return Experiment(
        task="text2image", preset=preset, seed=42, max_iter=10000, save_iter=500, logging_iter=10,
        optim=OptimConfig(lr=6e-5, weight_decay=0.1),
        schedule=ScheduleConfig(warmup_steps=100, f_start=0.0, f_max=1.0, f_min=1.0),
        loss=LossConfig(high_sigma_ratio=0.0),
        lora=LoraConfig(kind="lokr", factor=4, rank=10000, alpha=10000, target_modules="to_q,to_k,to_v,to_out.0"),
        data=DataConfig(num_frames=1, height=1024, width=1024, layout="image_folder", caption_strategy="textfile"),
        validation_every=500, validation_prompts="A photo-realistic image of a cat",
        validation_negative_prompt="ugly, cropped, blurry, low-quality, mediocre average",
        validation_steps=20, validation_guidance=4.0,
    )


@register
def predict2_text2image_2b_image_folder() -> Experiment:
    return _image_folder_lokr("predict2-2b-t2i")


@register
def predict2_text2image_14b_image_folder() -> Experiment:
    return _image_folder_lokr("predict2-14b-t2i")


@register
def tiny_text2image_image_folder() -> Experiment:
    """The CPU twin: tiny DiT, 32 x 32 pixels of area, validation every 10 iterations with 2 steps.
    Without dataset_path it builds 8 synthetic images of three shapes and a random tiny T5 first."""
    exp = _tiny("text2image")
    exp.max_iter, exp.save_iter, exp.batch_size = 20, 10, 2
    exp.data = DataConfig(num_frames=1, height=32, width=32, layout="image_folder", num_workers=0,
                          caption_strategy="textfile", latent_cache=True, synthetic=True, synthetic_videos=8)
    exp.lora = LoraConfig(kind="lokr", factor=4, rank=8, alpha=8, target_modules="to_q,to_k,to_v,to_out.0")
    exp.validation_every, exp.validation_prompts = 10, "a red square on a black background"
    exp.validation_steps, exp.validation_guidance = 2, 4.0
    return exp


# -- Cosmos-Predict1 diffusion post-training (seed 004) ----------------------------------------
# NVIDIA cosmos-predict1 cosmos_predict1/diffusion/training/config/text2world/experiment.py and
# video2world/experiment.py (the nemo_assets experiments), on the defaults of config/config.py
# (fusedadamw, lambdalinear, power EMA rate 0.1), config/base/model.py (EDMSDE p_mean 0 / p_std 1,
# sigma_data 0.5, loss_add_logvar, loss_scale 1, adjust_video_noise False) and conditioner.py
# (text dropout 0.2). Every full fine-tune: FusedAdamW lr 2^-14.3, wd 0.1, betas (0.9, 0.99),
# eps 1e-10; LambdaLinear warm-up 2500 from 1e-6 to 1, then constant (f_min = f_max = 1); 2000
# iterations, a checkpoint every 200, batch 1 per GPU; IterSpeed logs the loss every 10; FSDP.


def _predict1(preset: str, task: str, *, frames: int = 121, height: int = 720, width: int = 1280,
              context_parallel: int = 1, text_dropout: float = 0.0, ema: bool = True) -> Experiment:
    video = task == "video2world"
    return Experiment(
        task=task, preset=preset, max_iter=2000, save_iter=200, logging_iter=10, parallelism="fsdp",
        upstream_context_parallel=context_parallel,
        optim=OptimConfig(lr=2**-14.3, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-10),
        schedule=ScheduleConfig(warmup_steps=2500, f_start=1e-6, f_max=1.0, f_min=1.0),
        # video2world: adjust_video_noise True, video_cond_bool first_random_n 0..2, augment sigma
        # exp(N(-3, 2)) x 1, no conditioning dropout (LossConfig's augment_* defaults)
        loss=LossConfig(recipe="predict1", loss_scale=1.0, text_dropout=text_dropout, adjust_video_noise=video,
                        min_cond_frames=0, max_cond_frames=2),
        ema=EMAConfig(enabled=ema),
        data=DataConfig(num_frames=frames, height=height, width=width, layout="nemo"),
    )


def _predict1_lora(preset: str, task: str, *, height: int, width: int) -> Experiment:
    """LoRA rank 8, scale 1 on attn1/attn2 to_q and to_v of the first 28 blocks
    (get_fa_ca_qv_lora_config(first_nblocks=28, rank=8, scale=1)); lr 1e-4, no warm-up, 5000
    iterations, a checkpoint every 1000, DDP, context parallel 4; text dropout left at 0.2."""
    exp = _predict1(preset, task, height=height, width=width, context_parallel=4, text_dropout=0.2)
    exp.max_iter, exp.save_iter, exp.parallelism = 5000, 1000, "ddp"
    exp.optim.lr = 1e-4
    exp.schedule.warmup_steps = 0
    exp.lora = LoraConfig(kind="lora", rank=8, alpha=8, target_modules="to_q,to_v", first_nblocks=28)
    return exp


@register
def text2world_7b_example_cosmos_nemo_assets() -> Experiment:
    return _predict1("predict1-7b-text2world", "text2world")


@register
def text2world_7b_example_cosmos_nemo_assets_4gpu_80gb() -> Experiment:
    """384x384, 121 frames, context parallel 4, EMA on."""
    return _predict1("predict1-7b-text2world", "text2world", height=384, width=384, context_parallel=4)


@register
def text2world_7b_example_cosmos_nemo_assets_8gpu_40gb() -> Experiment:
    """384x384, 33 frames, EMA off (to save memory)."""
    return _predict1("predict1-7b-text2world", "text2world", frames=33, height=384, width=384, ema=False)


@register
def text2world_7b_example_cosmos_nemo_assets_4gpu_40gb() -> Experiment:
    """384x384, 17 frames, EMA off."""
    return _predict1("predict1-7b-text2world", "text2world", frames=17, height=384, width=384, ema=False)


@register
def text2world_14b_example_cosmos_nemo_assets() -> Experiment:
    """lr 2^-16, wd 0.2, eps 1e-11, loss_scale 10, adjust_video_noise, context parallel 16,
    LambdaLinear warm-up 2500 then down to 0.1 at 90000."""
    exp = _predict1("predict1-14b-text2world", "text2world", context_parallel=16)
    exp.optim = OptimConfig(lr=2**-16, weight_decay=0.2, betas=(0.9, 0.99), eps=1e-11)
    exp.schedule = ScheduleConfig(warmup_steps=2500, f_start=1e-6, f_max=1.0, f_min=0.1, cycle_length=90000)
    exp.loss.loss_scale, exp.loss.adjust_video_noise = 10.0, True
    return exp


@register
def text2world_7b_lora_example_cosmos_nemo_assets() -> Experiment:
    """At 480x848 (dataloader_train_cosmos_nemo_assets_480_848)."""
    return _predict1_lora("predict1-7b-text2world", "text2world", height=480, width=848)


@register
def video2world_7b_example_cosmos_nemo_assets() -> Experiment:
    """examples/post-training_diffusion_video2world.md; text dropout left at 0.2. (One upstream
    revision sets lr=0.0 here, a leftover; this takes the 2^-14.3 of its text2world twin.)"""
    return _predict1("predict1-7b-video2world", "video2world", text_dropout=0.2)


@register
def video2world_7b_lora_example_cosmos_nemo_assets() -> Experiment:
    return _predict1_lora("predict1-7b-video2world", "video2world", height=720, width=1280)


@register
def tiny_predict1_text2world_synthetic() -> Experiment:
    """The CPU twin of text2world_7b_example_cosmos_nemo_assets: the Predict1 recipe (logvar head
    included) on the tiny Predict1 DiT and tiny Cosmos tokenizer, with the tiny experiments' short
    schedule (5 warm-up steps, lr 2e-3) so it learns within 60 steps on a CPU."""
    exp = _tiny("video2world")
    exp.task, exp.preset = "text2world", "tiny-predict1-text2world"
    exp.loss = LossConfig(recipe="predict1", loss_scale=1.0, text_dropout=0.0, adjust_video_noise=False,
                          min_cond_frames=0, max_cond_frames=2)
    exp.data.num_frames = 17  # 3 latent frames of the 8x temporal CV8x8x8 tokenizer
    return exp


def describe(exp: Experiment) -> str:
    """One line for the log: the settings people ask about first."""
    lr = exp.optim.lr
    lr_txt = f"2^{math.log2(lr):.2f}" if lr > 0 else "0"
    return (f"{exp.name}: task={exp.task} preset={exp.preset} frames={exp.data.num_frames} "
            f"{exp.data.height}x{exp.data.width} batch={exp.batch_size}x{exp.grad_accum} lr={lr:.3g} ({lr_txt}) "
            f"wd={exp.optim.weight_decay} recipe={exp.loss.recipe} lora={exp.lora.kind} "
            f"precision={exp.precision} parallelism={exp.parallelism} ac={exp.activation_checkpointing} fast={exp.fast}"
            + (f" context_parallel={exp.context_parallel}" if exp.context_parallel > 1 else ""))
