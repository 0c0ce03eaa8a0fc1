"""The training loop: a plain loop in the torchtitan style.

build (model, VAE, adapters, EMA) -> parallelize (AC, compile, FSDP2/DDP) -> optimizer and
schedule -> data -> resume -> for each iteration: grad_accum micro-steps of
(latents, draws, loss, backward), clip, step, EMA (train_step), then log, checkpoint.

Nothing here names a vendor: the device, autocast type, collectives, RNG and the fused
AdamW all come from cosmos_hal (backend, dist, rng, ops).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch

import cosmos_hal.backend as _backend
from cosmos_hal import dist, rng
from cosmos_hal.train import ac
from cosmos_hal.train import checkpoint as ckpt
from cosmos_hal.train import grad_clip
from cosmos_hal.train import loss as losses
from cosmos_hal.train import memory_plan, sharded_init
from cosmos_hal.train.context_parallel import data_parallel, make_groups
from cosmos_hal.train.ema import PowerEMA
from cosmos_hal.train.experiments import Experiment, describe, resolve_context_parallel, resolve_fast_path
from cosmos_hal.train.metrics import MetricsLogger
from cosmos_hal.train.optim import build_optimizer
from cosmos_hal.train.parallelize import apply_fast_attention, parallelize, plan_auto_ac, set_grad_sync
from cosmos_hal.train.profiling import IterationProfiler
from cosmos_hal.train.schedule import build_scheduler, follow_this_run
from cosmos_hal.train.validation import Validator

log = logging.getLogger("cosmos_hal.train")


# -- building blocks --------------------------------------------------------------------------


def synthetic_dataset_dir(exp: Experiment, text_embed_dim: int) -> Path:
    """Where the tiny experiments' generated dataset lives (built once, atomically)."""
    d = exp.data
    tag = f"{d.layout}_{d.synthetic_videos}x{d.num_frames}x{d.height}x{d.width}_d{text_embed_dim}_s{exp.seed}"
    return Path(exp.resolved_output_dir()) / "synthetic_data" / tag


def ensure_synthetic_dataset(exp: Experiment, text_embed_dim: int, num_tokens: int,
                             features_folder: str = "t5_xxl") -> Path:
    """Build the synthetic dataset on the first process of each node; others wait."""
    from cosmos_hal.data.synthetic import make_synthetic_dataset

    root = synthetic_dataset_dir(exp, text_embed_dim)
    w = dist.world()
    if w.local_rank == 0 and not (root / ".complete").exists():
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        make_synthetic_dataset(tmp, layout=exp.data.layout, num_videos=exp.data.synthetic_videos,
                               num_frames=exp.data.num_frames, height=exp.data.height, width=exp.data.width,
                               fps=exp.data.fps, text_embed_dim=text_embed_dim, num_tokens=num_tokens,
                               seed=exp.seed, features_folder=features_folder)
        (tmp / ".complete").write_text("ok\n")
        try:
            os.replace(tmp, root)
        except OSError:  # another node on a shared file system finished first
            shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    return root


def build_model(exp: Experiment, device, *, meta: bool = False):
    """The DiT in fp32 (the master weights), with LoRA/DoRA/LoKr adapters when asked. ``meta``:
    everything stays on the meta device, for an FSDP2 run that shards it first and then fills
    each rank's shards (train/sharded_init.py)."""
    from cosmos_hal.models.dit import build_transformer

    weights = exp.model_path or None
    preset = exp.preset
    if exp.num_layers:  # benchmarks: the first num_layers blocks only
        from cosmos_hal.models.presets import get_preset

        preset = get_preset(exp.preset).replace(num_layers=exp.num_layers)
    model = build_transformer(preset, weights=None if meta else weights, dtype=torch.float32, device=device,
                              init_seed=exp.seed, meta=meta)
    preset = model.cosmos_hal_preset
    if exp.task == "video2world" and not preset.has_condition_mask:
        raise ValueError(f"preset {exp.preset!r} is a text2image DiT (no condition-mask channel); "
                         f"task=video2world needs a video2world preset")
    if exp.task != "video2world" and preset.has_condition_mask:
        raise ValueError(f"preset {exp.preset!r} is a video2world DiT (condition-mask channel); task={exp.task} "
                         f"needs a {exp.task} preset")
    if exp.lora.kind != "none":
        from cosmos_hal.models import lora

        lora.add_adapters(model, exp.lora.rank, exp.lora.alpha, kind=exp.lora.kind, factor=exp.lora.factor,
                          init=exp.lora.init, targets=lora_targets(exp.lora, model), seed=exp.seed)
    if exp.loss.recipe == "predict1" and exp.loss.logvar:
        # upstream trains it with the model; frozen under LoRA (setup_lora_requires_grad)
        head = losses.attach_logvar(model, seed=exp.seed, trainable=exp.lora.kind == "none")
        if weights and losses.load_upstream_logvar(head, weights):
            log.info("logvar head: the trained one of %s", weights)
    model.train()
    return model, preset


def lora_targets(cfg, model) -> tuple[str, ...]:
    """peft target names: ``lora.target_modules``; with ``lora.first_nblocks`` set, the full names
    of those modules inside transformer_blocks 0..first_nblocks-1 only (cosmos-predict1's
    get_fa_ca_qv_lora_config blocks regex)."""
    names = tuple(m.strip() for m in cfg.target_modules.split(",") if m.strip())
    if cfg.first_nblocks <= 0:
        return names
    blocks = tuple(f"transformer_blocks.{i}." for i in range(cfg.first_nblocks))
    return tuple(full for full, _ in model.named_modules()
                 if full.startswith(blocks) and any(full == n or full.endswith("." + n) for n in names))


def vae_source(exp: Experiment) -> str:
    """vae_path, else the pipeline folder's vae/, else the preset shape (random weights)."""
    if exp.vae_path:
        return exp.vae_path
    if exp.model_path and os.path.isfile(os.path.join(exp.model_path, "vae", "config.json")):
        return os.path.join(exp.model_path, "vae")
    from cosmos_hal.models.presets import get_preset

    tiny = exp.preset.startswith("tiny")
    if get_preset(exp.preset).family == "predict1":  # Cosmos 1.0 DiTs work on the CV8x8x8 tokenizer's latents
        return "tiny-cosmos1" if tiny else "cosmos1-cv8x8x8"
    return "tiny" if tiny else "wan2.1"


def check_precision(exp: Experiment, backend) -> None:
    """precision=bf16 (autocast and bf16 weights) only where the backend computes bfloat16."""
    from cosmos_hal.train.experiments import ExperimentError

    if exp.precision == "bf16" and not backend.supports_bf16():
        raise ExperimentError(f"precision=bf16: the {backend.name} backend's device does not support bfloat16; "
                              "pass precision=fp32")


def build_vae_for(exp: Experiment, device):
    from cosmos_hal.models.vae import build_vae

    dtype = torch.bfloat16 if exp.precision == "bf16" else torch.float32
    return build_vae(vae_source(exp), dtype=dtype, device=device, init_seed=exp.seed)


def build_data(exp: Experiment, preset, world, *, dp_rank: int | None = None, dp_size: int | None = None,
               logger=None):
    """Dataset and loader; the loader shards samples over the data-parallel ranks (the ranks of
    one context-parallel group read the same samples)."""
    from cosmos_hal.data import text_features
    from cosmos_hal.data.datasets import build_dataset
    from cosmos_hal.data.loader import build_loader

    from cosmos_hal.train import image_data

    if image_data.wanted(exp):  # a flat folder of captioned images (SimpleTuner's layout): T5 cache + buckets
        return image_data.build(exp, preset, world, dp_rank=world.rank if dp_rank is None else dp_rank,
                                dp_size=world.world_size if dp_size is None else dp_size, logger=logger)
    features = text_features.for_preset(preset)  # Predict2.5 DiTs read Reason1 features, Predict2 T5
    if exp.data.synthetic and not exp.dataset_path:
        root = ensure_synthetic_dataset(exp, preset.context_dim, preset.text_max_length, features.folder)
    elif exp.dataset_path:
        root = Path(exp.dataset_path)
    else:
        from cosmos_hal.train.preflight import dataset_needed

        raise ValueError(dataset_needed(exp))
    cache = os.path.join(exp.resolved_output_dir(), "latent_cache") if exp.data.latent_cache else None
    dataset = build_dataset(root, num_frames=exp.data.num_frames, resolution=(exp.data.height, exp.data.width),
                            layout=exp.data.layout, seed=exp.seed, skip_bad_samples=exp.data.skip_bad_samples,
                            latent_cache=cache, text_embed_dim=preset.context_dim,
                            num_tokens=preset.text_max_length, text_features=features.name,
                            resize_mode=exp.data.resize_mode)
    loader = build_loader(dataset, batch_size=exp.batch_size, seed=exp.seed,
                          rank=world.rank if dp_rank is None else dp_rank,
                          world_size=world.world_size if dp_size is None else dp_size, num_workers=exp.data.num_workers,
                          skip_bad_samples=exp.data.skip_bad_samples, shuffle=not exp.parity)
    return dataset, loader


def latents_of(batch: dict, vae, dataset, device) -> torch.Tensor:
    """Normalised latents: from the loader's cached raw latents when present, else from the VAE
    (then stored in the cache). Both paths normalise the same stored fp32 raw latents, so a
    run gives bit-identical inputs whether or not an entry was cached yet."""
    from cosmos_hal.models.vae import denormalize_latents, encode_video, normalize_latents

    if "latents" in batch:
        return normalize_latents(vae, batch["latents"].to(device=device, dtype=torch.float32))
    latents = encode_video(vae, batch["video"].to(device)).float()
    cache = getattr(dataset, "latent_cache", None)
    if cache is None:
        return latents
    raw = denormalize_latents(vae, latents)
    h, w = batch["video"].shape[-2:]
    for i, path in enumerate(batch["path"]):
        cache.put(Path(path).stem, int(batch["frame_start"][i]), int(batch["num_frames"][i]), (h, w),
                  raw[i].cpu(), source=path)
    return normalize_latents(vae, raw)


def batch_fps(batch: dict) -> float | None:
    """The batch's frame rate for the DiT's temporal RoPE (Predict1 scales it by fps / 24, as
    upstream's conditioner passes the clip's fps); one value per batch, as upstream asserts."""
    fps = batch.get("fps")
    if fps is None:
        return None
    values = sorted({float(v) for v in torch.as_tensor(fps).reshape(-1).tolist()})
    if len(values) > 1:
        raise ValueError(f"this batch mixes clips of {values} fps; the DiT takes one fps per batch: "
                         "pass batch_size=1 or use clips of one frame rate")
    return values[0]


class DrawAhead:
    """Computes the next micro-step's random draws on a host thread while the device works.

    Why: the draws are a pure function of (seed, step, rank) on the CPU (Philox in numpy,
    which releases the GIL); for a 2B Video2World step that is ~5M normals, a second or two
    of host time that would otherwise sit on the critical path. Same numbers either way."""

    def __init__(self, cfg, *, seed: int, rank: int, is_video: bool, world: int = 1):
        from concurrent.futures import ThreadPoolExecutor

        self.cfg, self.seed, self.rank, self.is_video, self.world = cfg, seed, rank, is_video, world
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending = None  # (step, shape, future)

    def _draw(self, shape, step):
        return losses.draw(self.cfg, shape, seed=self.seed, step=step, rank=self.rank, is_video=self.is_video,
                           world=self.world)

    def get(self, shape, step: int):
        shape = tuple(int(x) for x in shape)
        pending, self.pending = self.pending, None
        d = pending[2].result() if pending and pending[:2] == (step, shape) else self._draw(shape, step)
        self.pending = (step + 1, shape, self.pool.submit(self._draw, shape, step + 1))
        return d

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


def _chosen_kernels() -> str:
    """The kernels that actually ran, per op, with any fallback and its reason (registry.select
    records each dispatched call), so a log says whether a pin or a constraint took effect."""
    from cosmos_hal import registry

    ran = registry.ran()
    return ", ".join(f"{op}={ran[op].describe()}" for op in sorted(ran)) or "none dispatched"


def memory_gb(backend) -> float:
    stats = backend.memory_stats()
    for key in ("peak_allocated_gb", "peak_rss_gb"):
        if key in stats:
            return float(stats[key])
    return float(max(stats.values())) if stats else 0.0


# -- the loop -----------------------------------------------------------------------------------


def refine_ac(model, memory, budget, allocated_before: int, logger) -> None:
    """``ac_mode=auto`` after the first iteration: upgrade the per-block plan into the memory it
    left free (ac.refine_modes; its peak plus the optimizer state it created), within the smaller
    of the budget at start and the one now (another process may have taken memory since). Every
    rank uses the largest peak and the smallest budget of all ranks, so all run the same plan."""
    from cosmos_hal.train.parallelize import shared_budget

    current = ac.block_modes(model)
    grown = max(0, ac.device_allocated_bytes() - allocated_before)
    peak = ac.device_peak_bytes() + grown
    peak = int(dist.all_reduce_scalar(peak / 2**30, "max") * 2**30)
    usable = min(budget.usable, shared_budget(budget.headroom).usable)
    new = ac.refine_modes(current, memory, total_bytes=usable, peak_bytes=peak, headroom=budget.headroom)
    if new != current:
        ac.set_block_modes(model, new)
        logger.info("activation checkpointing auto, refined after the first iteration (peak "
                    f"{peak / 2**30:.1f} GiB): " + ", ".join(f"{m} {new.count(m)}" for m in ac.LADDER if new.count(m)))


@dataclasses.dataclass
class StepParts:
    """What one optimisation step works on; train() builds it once."""

    exp: Experiment
    net: torch.nn.Module  # what runs forward (FSDP2/DDP-wrapped, compiled blocks)
    owner: torch.nn.Module  # what holds the weights (EMA, checkpoints)
    params: list  # the trainable parameters (clipped)
    optimizer: torch.optim.Optimizer
    scheduler: object
    ema: PowerEMA | None
    vae: torch.nn.Module
    dataset: object  # its latent cache takes the latents the VAE computes
    draws: DrawAhead
    preset: object
    device: torch.device
    device_type: str  # autocast's


@dataclasses.dataclass
class StepMetrics:
    """One step's numbers, left on the device: reading one waits for the device, so the loop
    reads them only on the iterations it logs."""

    loss: torch.Tensor  # this rank's mean over the grad_accum micro-batches
    lr: float  # the rate the optimizer step used
    grad_norm: torch.Tensor  # before clipping
    nonfinite: torch.Tensor  # gradient elements that were NaN/inf, zeroed before clipping


def forward_backward(parts: StepParts, batch: dict, step: int, sync_grads: bool) -> torch.Tensor:
    """One micro-batch: latents, the random draws of global micro-step ``step``, the loss, and
    backward of loss / grad_accum (gradients reduced over ranks only when ``sync_grads``)."""
    exp, device = parts.exp, parts.device
    amp = exp.precision == "bf16"
    x0 = latents_of(batch, parts.vae, parts.dataset, device)
    draws = parts.draws.get(x0.shape, step)
    text = batch["t5_text_embeddings"].to(device=device, dtype=torch.float32)
    pad = torch.zeros(1, 1, x0.shape[-2], x0.shape[-1], device=device)
    fps = batch_fps(batch) if exp.loss.recipe == "predict1" else None

    def net_fn(x_in, timestep, cond_mask, text_keep):
        ctx = text * text_keep.view(-1, 1, 1).to(text.dtype)
        if amp and exp.loss.bf16_timestep:  # as upstream under bf16 (LossConfig.bf16_timestep)
            timestep = timestep.to(torch.bfloat16)
        with torch.autocast(device_type=parts.device_type, dtype=torch.bfloat16, enabled=amp):
            return parts.net(hidden_states=x_in, timestep=timestep, encoder_hidden_states=ctx,
                             condition_mask=cond_mask if parts.preset.has_condition_mask else None,
                             padding_mask=pad, return_dict=False, **({"fps": fps} if fps else {}))[0]

    with set_grad_sync(parts.net, sync_grads):
        loss, _ = losses.compute(net_fn, x0, draws, exp.loss, is_video=exp.task == "video2world",
                                 logvar=getattr(parts.owner, losses.LOGVAR_ATTR, None))
        (loss / exp.grad_accum).backward()
    return loss.detach()


def train_step(parts: StepParts, batches, iteration: int) -> StepMetrics:
    """One optimisation step, as torchtitan's Trainer.train_step: grad_accum micro-batches from
    ``batches``, then the clip (NaN/inf gradient elements zeroed first, as upstream's GradClip
    callback with force_finite), the optimizer, schedule and EMA steps, and zeroed gradients."""
    exp = parts.exp
    loss_sum = torch.zeros((), device=parts.device)
    for micro in range(exp.grad_accum):
        loss_sum += forward_backward(parts, next(batches), iteration * exp.grad_accum + micro,
                                     sync_grads=micro == exp.grad_accum - 1)
    grad_norm, nonfinite = grad_clip.clip_(parts.params, exp.optim.grad_clip,
                                           force_finite=exp.optim.zero_nonfinite_grads)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    lr = parts.optimizer.param_groups[0]["lr"]
    parts.optimizer.step()
    parts.scheduler.step()
    if parts.ema is not None:
        parts.ema.update(parts.owner, iteration)
    parts.optimizer.zero_grad()
    return StepMetrics(loss=loss_sum / exp.grad_accum, lr=lr, grad_norm=grad_norm,
                       nonfinite=nonfinite.to(parts.device))


def step_record(metrics: StepMetrics, iteration: int, *, exp: Experiment, backend, dp_size: int,
                since: float, iterations: int, nonfinite: torch.Tensor, sharded_grads: bool) -> dict:
    """The log record of ``iteration``: the loss averaged over ranks (a NaN/inf loss stops the
    run), the speed of the ``iterations`` steps since ``since``, memory, and the gradient elements
    zeroed since the last record (summed over FSDP shards; else every rank holds all of them)."""
    loss = float(dist.all_reduce(metrics.loss, "mean"))
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} at iteration {iteration}; stopping (lower optim.lr?)")
    backend.synchronize()
    s_per_it = (time.perf_counter() - since) / iterations
    return {
        "iteration": iteration, "loss": loss, "lr": float(metrics.lr), "grad_norm": float(metrics.grad_norm),
        "s_per_it": s_per_it,
        "samples_per_s": exp.batch_size * exp.grad_accum * dp_size / s_per_it,
        "mem_gb": memory_gb(backend), "backend": backend.name,
        "nonfinite_grads": int(dist.all_reduce(nonfinite, "sum" if sharded_grads else "max")),
    }


def train(exp: Experiment) -> dict:
    """Run ``exp`` to max_iter (resuming from the latest checkpoint); returns a summary."""
    backend = _backend.current()
    check_precision(exp, backend)
    world = dist.init(timeout_s=exp.dist_timeout)
    if exp.parity:
        backend.set_deterministic(True)
        exp = dataclasses.replace(exp, logging_iter=1)
    exp, batch_line = resolve_context_parallel(exp, world.world_size)
    cp = make_groups(world.world_size, world.rank, exp.context_parallel)
    dp_rank, dp_size = data_parallel(world.world_size, world.rank, exp.context_parallel)
    rng.seed_everything(exp.seed, dp_rank)  # the ranks of a context-parallel group act as one
    out_dir = exp.resolved_output_dir()
    ckpt_root = os.path.join(out_dir, "checkpoints")
    logger = MetricsLogger(out_dir, enabled=world.is_main, total=exp.max_iter)
    exp, fast_line = resolve_fast_path(exp, backend.proven_fast_path())
    logger.info(describe(exp))
    logger.info(fast_line)
    logger.info(f"backend {backend.name} ({world.dist_backend}), world size {world.world_size}, device {world.device}")
    logger.info(batch_line)
    exp, memory_line = memory_plan.resolve(exp, backend, world)  # stops here if the plan cannot fit
    logger.info(memory_line)
    if cp.size > 1:
        logger.info(f"context parallel: {cp.size} ranks split each sample's tokens; data-parallel size {dp_size}")
    if not exp.model_path:
        logger.info(f"model_path not set: training {exp.preset} from RANDOM weights (seeded init)")
    if os.sep not in vae_source(exp):
        logger.info(f"VAE: preset {vae_source(exp)!r} with RANDOM weights (set vae_path= for real latents)")

    from cosmos_hal.models.presets import get_preset

    # data first: a dataset missing the text features its DiT reads stops here, with the command
    # that makes them, before minutes of model loading
    dataset, loader = build_data(exp, get_preset(exp.preset), world, dp_rank=dp_rank, dp_size=dp_size, logger=logger)
    sharded = memory_plan.uses_fsdp(exp, world.world_size)  # then built on meta, filled after fully_shard
    model, preset = build_model(exp, world.device, meta=sharded)
    vae = build_vae_for(exp, world.device)
    ac_modes = ac_memory = ac_budget = None
    if exp.activation_checkpointing and exp.ac_mode == "auto":
        if exp.fast_attention:  # so the probe measures the processor that will run
            apply_fast_attention(model, world.device)
        with sharded_init.probe_weights(model, world.device, exp.seed) if sharded else contextlib.nullcontext():
            ac_modes, ac_memory, ac_budget, line = plan_auto_ac(model, exp, preset, world.device,
                                                                world_size=world.world_size)
        logger.info(line)
    net, owner = parallelize(model, exp, world, ac_modes=ac_modes, cp=cp)
    if sharded:
        held = sharded_init.materialize(owner, exp, world.device, offload=exp.memory == "offload_params")
        logger.info(f"FSDP2: built on meta, each rank materialized its 1/{world.world_size} shards "
                    f"({held / 2**20:.1f} MiB of parameters on rank {world.rank}"
                    + (", in host memory" if exp.memory == "offload_params" else "") + ")")
        logger.info("FSDP2: master weights float32 (sharded" + (", in host memory: memory=offload_params"
                    if exp.memory == "offload_params" else "") + "), blocks gathered and computed in "
                    f"{'bfloat16' if exp.precision == 'bf16' else 'float32'}, gradients reduced in float32")
    # after sharding, so each rank's shadows are its own shards (FSDP2) of the live weights
    ema = PowerEMA(owner, exp.ema.gamma, exp.ema.iteration_shift) if exp.ema.enabled else None
    # Text2Image renders every validation_every iterations (train/validation.py; off at 0)
    validator = Validator(exp, world, logger, model=owner, vae=vae, ema=ema, preset=preset, backend=backend)

    params = [p for p in owner.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    logger.info(f"trainable parameters: {n_train:,} ({'adapters: ' + exp.lora.kind if exp.lora.kind != 'none' else 'full'})")
    optimizer = build_optimizer(params, exp.optim, offload=exp.memory == "offload_optimizer")
    if exp.optim.name != "adamw" or exp.memory == "offload_optimizer":
        logger.info(f"optimizer: {exp.optim.name}, moments {optimizer.state_dtype} "
                    + ("in host memory (memory=offload_optimizer)" if exp.memory == "offload_optimizer" else "on the device"))
    scheduler = build_scheduler(optimizer, exp.schedule, exp.cycle_length(), processes=dp_size)

    iteration = 0
    if world.is_main:  # what a kill during a save or keep_last rotation left behind
        for name in ckpt.clean(ckpt_root):
            logger.info(f"removed {os.path.join(ckpt_root, name)} (left by an interrupted save or rotation)")
    dist.barrier()
    found = ckpt.latest(ckpt_root) if exp.resume else None
    if found:
        base_lrs = list(scheduler.base_lrs)
        iteration = ckpt.restore(found, model=owner, optimizer=optimizer, scheduler=scheduler, ema=ema, loader=loader)
        logger.info(f"resumed from {found} at iteration {iteration}")
        for old, new in follow_this_run(scheduler, base_lrs):
            logger.info(f"optim.lr {new:g} (the checkpoint's run had {old:g}): the schedule continues from it")
        if iteration >= exp.max_iter:
            logger.info(f"already at max_iter={exp.max_iter}: nothing to train (raise max_iter=, "
                        f"pass resume=false, or use another output_dir=)")
    start_iteration = iteration
    if logger.bar is not None:
        logger.bar.n = iteration
        logger.bar.refresh()

    is_video = exp.task == "video2world"
    trainable_only = exp.lora.kind != "none"
    exp_dict = dataclasses.asdict(exp)
    batches = iter(loader)
    draw_ahead = DrawAhead(exp.loss, seed=exp.seed, rank=dp_rank, is_video=is_video, world=dp_size)
    parts = StepParts(exp=exp, net=net, owner=owner, params=params, optimizer=optimizer, scheduler=scheduler,
                      ema=ema, vae=vae, dataset=dataset, draws=draw_ahead, preset=preset, device=world.device,
                      device_type=backend.device_type)
    t_window, it_window = time.perf_counter(), 0
    backend.reset_peak_memory()
    allocated_before = ac.device_allocated_bytes()
    last_loss = math.nan
    nonfinite_sum = torch.zeros((), device=world.device)
    sharded_grads = world.world_size > 1 and exp.parallelism == "fsdp"  # else every rank holds all gradients

    def save():
        path = ckpt.save(ckpt_root, iteration, model=owner, optimizer=optimizer, scheduler=scheduler, ema=ema,
                         loader=loader, experiment=exp_dict, trainable_only=trainable_only, keep_last=exp.keep_last,
                         extra_writer=(lambda d, sd: export_adapters(owner, d, sd)) if trainable_only else None,
                         format=exp.checkpoint.format)
        logger.info(f"saved checkpoint {path}" + (" (sharded)" if exp.checkpoint.format == "sharded" else ""))

    profiler = IterationProfiler.from_env(out_dir, world.rank, backend.synchronize, logger.info)  # COSMOS_HAL_PROFILE
    while iteration < exp.max_iter:
        profiler.before(iteration + 1)
        metrics = train_step(parts, batches, iteration)
        nonfinite_sum = nonfinite_sum + metrics.nonfinite
        if iteration == start_iteration:  # the first step's memory peak and kernels are known now
            if ac_memory is not None:
                refine_ac(model, ac_memory, ac_budget, allocated_before, logger)
            logger.info("kernels that ran: " + _chosen_kernels())
        iteration += 1
        profiler.after(iteration)
        it_window += 1
        logger.step()

        if iteration % exp.logging_iter == 0 or iteration == exp.max_iter:
            record = step_record(metrics, iteration, exp=exp, backend=backend, dp_size=dp_size, since=t_window,
                                 iterations=it_window, nonfinite=nonfinite_sum, sharded_grads=sharded_grads)
            last_loss = record["loss"]
            nonfinite_sum = torch.zeros((), device=world.device)
            logger.log(record)
            t_window, it_window = time.perf_counter(), 0
        if iteration % exp.save_iter == 0 or (iteration == exp.max_iter and exp.save_at_end):
            save()
        validator.maybe_run(iteration)

    draw_ahead.close()
    summary = {
        "experiment": exp.name, "iterations": iteration, "final_loss": last_loss,
        "bad_samples": loader.bad_samples, "output_dir": out_dir,
    }
    logger.info(f"done: {iteration} iterations, final loss {last_loss:.6g}, output in {out_dir}")
    logger.info(loader.bad_sample_report())
    logger.close()
    dist.shutdown()
    return summary


def export_adapters(model, checkpoint_dir: str, weights: dict) -> None:
    """Write the adapters as diffusers-format ``pytorch_lora_weights.safetensors`` into the
    checkpoint, from the gathered (full, CPU) weights so it works under FSDP2 too."""
    from peft.utils import get_peft_model_state_dict

    from cosmos_hal.models import lora

    adapters = get_peft_model_state_dict(model, state_dict=weights, adapter_name=lora.ADAPTER_NAME)
    lora.save_adapters(model, checkpoint_dir, state_dict=adapters)
