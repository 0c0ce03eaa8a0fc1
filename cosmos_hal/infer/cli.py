"""``python -m cosmos_hal infer video2world|text2world|text2image`` (and tools/infer.py): flags
-> a loaded pipeline -> files. The logic lives in the modules next to this one; which model
generation (Predict1 or Predict2) a model is, infer/family.py decides."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cosmos_hal.backend import BACKEND_MODULES

DEFAULT_SIZE = {"video2world": (704, 1280), "text2world": (704, 1280), "text2image": (768, 1360)}
DEFAULT_OUT = {"video2world": "output.mp4", "text2world": "output.mp4", "text2image": "output.png"}
DEFAULT_BATCH_OUT = "outputs"
TASKS = ("video2world", "text2world", "text2image")


def _common(p: argparse.ArgumentParser, task: str) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True,
                   help="diffusers pipeline folder (transformer/ vae/ text_encoder/ tokenizer/ scheduler/), "
                        "or an NVIDIA checkpoint .pt (then also --vae_path and --text_encoder_path)")
    g.add_argument("--vae_path", default=None,
                   help="VAE folder overriding the model's: Wan 2.1 (diffusers AutoencoderKLWan) for Predict2, "
                        "Cosmos 1.0 CV8x8x8 (AutoencoderKLCosmos) for Predict1")
    g.add_argument("--text_encoder_path", default=None,
                   help="T5 folder (encoder config.json + tokenizer, or text_encoder/ + tokenizer/ subfolders)")
    g.add_argument("--preset", default=None,
                   help="DiT shape of a .pt checkpoint (default predict2-2b / predict2-2b-t2i, for Predict1 "
                        "predict1-7b-text2world / predict1-7b-video2world; e.g. predict2-14b, predict1-14b)")
    g.add_argument("--family", choices=["predict1", "predict2"], default=None,
                   help="model generation: Predict1 (Cosmos 1.0) or Predict2/2.5. Default: read from a model "
                        "folder (its pipeline class, or transformer config extra_pos_embed_type=learnable = "
                        "Predict1); for a .pt from --preset, else predict1 for text2world, predict2 otherwise")
    g.add_argument("--ema", action="store_true", help="training checkpoints: use the EMA weights (NVIDIA's net_ema.*, "
                   "a cosmos_hal run's iter_N/model.pt EMA)")
    g.add_argument("--lora", "--lora_dir", action="extend", nargs="+", default=[], metavar="PATH[:SCALE]",
                   help="LoRA/DoRA/LoKr adapter folder or pytorch_lora_weights.safetensors (LyCORIS LoKr too), "
                        "with an optional scale "
                        "(default 1.0); several (--lora A:0.7 B:0.3, or --lora repeated) are mixed")
    g.add_argument("--fuse_lora", action="store_true", help="merge the adapters into the weights (faster steps)")

    g = p.add_argument_group("prompt")
    g.add_argument("--prompt", default=None,
                   help="text prompt, or a .txt file holding it (as NVIDIA's scripts/hf_*.py take it)")
    g.add_argument("--prompt_file", default=None, help="read the prompt from this text file")
    g.add_argument("--negative_prompt", default=None,
                   help="negative prompt text or .txt file (default: the pipeline's Cosmos default)")

    g = p.add_argument_group("sampling")
    h, w = DEFAULT_SIZE[task]
    g.add_argument("--num_steps", type=int, default=35, help="denoising steps (default 35)")
    g.add_argument("--sampler", choices=["upstream", "diffusers"], default=None,
                   help="upstream (default for Predict2): cosmos-predict2's 2nd-order multistep sampler with a final "
                        "clean pass, num_steps+1 model calls; diffusers: the pipeline's first-order Euler "
                        "(Predict2.5 and Predict1 always use their own scheduler: UniPC, EDM Euler)")
    g.add_argument("--guidance", type=float, default=7.0, help="classifier-free guidance scale; <= 1 disables it")
    g.add_argument("--seed", type=int, default=0, help="noise seed; same seed, same noise on every backend")
    g.add_argument("--height", type=int, default=h, help=f"output height, a multiple of 16 (default {h})")
    g.add_argument("--width", type=int, default=w, help=f"output width, a multiple of 16 (default {w})")
    g.add_argument("--out", default=None,
                   help=f"output file (default {DEFAULT_OUT[task]}); with --batch_dir an output folder "
                        f"(default {DEFAULT_BATCH_OUT})")
    g.add_argument("--output_dir", default=None, metavar="DIR",
                   help=f"output folder instead of --out: writes DIR/{DEFAULT_OUT[task]} (with --batch_dir, DIR/NAME.mp4)")
    p.add_argument("output_folder", nargs="?", default=None, metavar="OUTPUT_DIR",
                   help=f"same as --output_dir; NVIDIA's scripts/hf_*.py take it here: "
                        f"'{task} output/x --prompt p.txt' writes output/x/{DEFAULT_OUT[task]}")

    g = p.add_argument_group("runtime")
    g.add_argument("--backend", choices=list(BACKEND_MODULES), default=None,
                   help="use this backend instead of auto-detection (also COSMOS_HAL_BACKEND)")
    g.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                   help="weights and activations (default: fp32 on the CPU, bf16 elsewhere)")
    g.add_argument("--processor", choices=["hal", "diffusers"], default="hal",
                   help="attention processor: cosmos_hal's kernels (default) or diffusers' own")
    g.add_argument("--offload", action="store_true",
                   help="keep text encoder, DiT and VAE on the CPU except while each runs (needs accelerate)")
    g.add_argument("--guardrail", action="store_true",
                   help="run NVIDIA's cosmos-guardrail on prompt and output (pip install cosmos-guardrail)")
    g.add_argument("-v", "--verbose", action="store_true", help="log what is loaded and chosen")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``infer`` with its ``video2world`` and ``text2image`` commands to ``subparsers``."""
    infer = subparsers.add_parser("infer", help="generate videos (video2world, text2world) or images (text2image)",
                                  description="Cosmos-Predict2 and Cosmos-Predict1 generation with diffusers' "
                                              "pipelines on cosmos_hal.")
    tasks = infer.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True

    p = tasks.add_parser("video2world", help="a video from an image or video and a prompt",
                         description="Video2World: continue an image or video as directed by a prompt. "
                                     "Batch mode: --batch_dir over NAME.png + NAME.txt pairs.")
    _common(p, "video2world")
    g = p.add_argument_group("video")
    g.add_argument("--image", default=None, help="conditioning image (first frame)")
    g.add_argument("--video", default=None, help="conditioning video (its last --num_conditional_frames condition)")
    g.add_argument("--num_conditional_frames", type=int, choices=[1, 5, 9], default=None,
                   help="pixel frames to condition on, taken from the end of --video: 1 or 5 for Predict2, 1 or 9 "
                        "for Predict1 (1 or 2 latent frames, as they were trained); default 5 (9) for --video, "
                        "1 for --image")
    g.add_argument("--batch_dir", "--data_dir", default=None,
                   help="folder of NAME.png + NAME.txt pairs; writes --out/NAME.mp4 for each")
    g.add_argument("--skip_existing", action="store_true", help="batch mode: keep mp4s that already exist")
    _frames_args(g)
    g.add_argument("--fps_scaling", action="store_true",
                   help="Predict2: also scale the temporal RoPE by 24/fps as diffusers does (off by default: "
                        "NVIDIA's Predict2 checkpoints were trained without it; Predict1 always scales, as upstream)")

    p = tasks.add_parser("text2world", help="a video from a prompt (Cosmos-Predict1)",
                         description="Text2World (Cosmos-Predict1 / Cosmos 1.0): a video from a prompt.")
    _common(p, "text2world")
    _frames_args(p.add_argument_group("video"))

    p = tasks.add_parser("text2image", help="an image from a prompt", description="Text2Image generation.")
    _common(p, "text2image")
    return infer


def _frames_args(g) -> None:
    g.add_argument("--num_frames", "--num_output_frames", "--num_video_frames", type=int, default=None,
                   help="frames to generate: 4k+1 for Predict2 (default 93), 8k+1 for Predict1 (default 121)")
    g.add_argument("--fps", type=float, default=None,
                   help="frame rate of the mp4 (default 16 for Predict2, 24 for Predict1, where it also sets "
                        "the DiT's temporal RoPE as upstream does)")


def build_parser(prog: str = "python -m cosmos_hal") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    add_parser(parser.add_subparsers(dest="command"))
    return parser


def _resolve_output_folder(args, batch: bool) -> None:
    """OUTPUT_DIR / --output_dir (NVIDIA's and diffusers' scripts name a folder) -> --out."""
    from cosmos_hal.infer.errors import InferenceInputError

    folders = {f for f in (args.output_dir, args.output_folder) if f is not None}
    if not folders:
        return
    if len(folders) > 1 or args.out is not None:
        given = [f"--out {args.out}"] * (args.out is not None) + [f"output folder {f}" for f in sorted(folders)]
        raise InferenceInputError(f"{' and '.join(given)}: give one place to write (--out FILE, or one output folder)")
    folder = folders.pop()
    if Path(folder).suffix.lower() in (".mp4", ".png", ".jpg", ".jpeg"):
        raise InferenceInputError(f"output folder {folder}: names a file; for a file pass --out {folder}")
    args.out = folder if batch else str(Path(folder) / DEFAULT_OUT[args.task])


def _check_args(args) -> None:
    """Everything that can be checked before a model loads."""
    from cosmos_hal.infer import checks
    from cosmos_hal.infer.adapters import lora_file, parse_lora_arg
    from cosmos_hal.infer.errors import InferenceInputError

    from cosmos_hal.infer.family import DEFAULTS, detect_family

    video = args.task != "text2image"
    model = checks.check_model_source(args.model, args.vae_path, args.text_encoder_path)
    args.family = detect_family(args.task, model, args.preset, args.family)
    family = DEFAULTS[args.family]
    if video:
        args.num_frames = family.num_frames if args.num_frames is None else args.num_frames
        args.fps = family.fps if args.fps is None else args.fps
    checks.check_size(args.height, args.width, args.num_frames if video else None, family.temporal_factor, family.vae)
    if args.num_steps < 1:
        raise InferenceInputError(f"--num_steps {args.num_steps}: must be at least 1")
    if video and args.fps <= 0:
        raise InferenceInputError(f"--fps {args.fps}: must be positive")
    batch = getattr(args, "batch_dir", None) is not None
    _resolve_output_folder(args, batch)
    if args.out is None:
        args.out = DEFAULT_BATCH_OUT if batch else DEFAULT_OUT[args.task]
    if not batch:
        checks.check_output_suffix(args.out, video=video)
    for text in args.lora:
        lora_file(parse_lora_arg(text).path)
    if batch:
        if args.image or args.video or args.prompt or args.prompt_file:
            raise InferenceInputError("--batch_dir takes image and prompt from its NAME.png/NAME.txt pairs; "
                                      "drop --image/--video/--prompt/--prompt_file")
        if args.num_conditional_frames not in (None, 1):
            raise InferenceInputError(f"--num_conditional_frames {args.num_conditional_frames}: --batch_dir "
                                      "conditions on one image per video; drop it or pass 1")
        from cosmos_hal.infer.batch import find_pairs

        find_pairs(args.batch_dir)
        if Path(args.out).suffix:
            raise InferenceInputError(f"--out {args.out}: with --batch_dir give an output folder, not a file")


def _request(args):
    from cosmos_hal.infer import checks
    from cosmos_hal.infer.conditioning import conditioned_latent_frames, load_conditioning, pixel_frames
    from cosmos_hal.infer.family import DEFAULTS
    from cosmos_hal.infer.generate import Request

    video = args.task != "text2image"
    batch = getattr(args, "batch_dir", None) is not None
    family = DEFAULTS[args.family]
    req = Request(
        prompt="" if batch else checks.read_prompt(args.prompt, args.prompt_file),
        negative_prompt=checks.prompt_text(args.negative_prompt, "--negative_prompt"),
        num_steps=args.num_steps,
        guidance=args.guidance,
        seed=args.seed,
        height=args.height,
        width=args.width,
    )
    if video:
        req.num_frames, req.fps = args.num_frames, args.fps
        if args.task == "video2world" and not batch:
            req.conditioning = load_conditioning(args.image, args.video, args.num_conditional_frames,
                                                 choices=family.conditional_frames, model=args.family.capitalize())
            conditioned_latent_frames(pixel_frames(req.conditioning), req.num_frames,  # before the model loads
                                      family.temporal_factor)
    return req


def run(args) -> list[Path]:
    """Load, generate, write; returns the written files. Raises InferenceInputError on bad input."""
    from cosmos_hal.backend import use
    from cosmos_hal.infer import generate
    from cosmos_hal.infer.adapters import parse_lora_arg
    from cosmos_hal.infer.loader import LoadOptions, load_pipeline

    _check_args(args)
    req = _request(args)
    backend = use(args.backend) if args.backend else None
    opts = LoadOptions(
        task=args.task, model=args.model, vae_path=args.vae_path, text_encoder_path=args.text_encoder_path,
        preset=args.preset, ema=args.ema, dtype=args.dtype, processor=args.processor,
        fps_scaling=getattr(args, "fps_scaling", False), offload=args.offload, guardrail=args.guardrail,
        loras=[parse_lora_arg(t) for t in args.lora], fuse_lora=args.fuse_lora,
        sampler=args.sampler, family=args.family,
    )
    pipe = load_pipeline(opts, backend)
    if args.task == "video2world" and args.batch_dir is not None:
        from cosmos_hal.infer.batch import run_batch

        return run_batch(pipe, args.batch_dir, args.out, req, skip_existing=args.skip_existing)
    if args.task == "video2world":
        frames = generate.video2world(pipe, req)
        return [generate.write_output(args.out, frames, req.fps)]
    if args.task == "text2world":
        return [generate.write_output(args.out, generate.text2world(pipe, req), req.fps)]
    return [generate.write_output(args.out, generate.text2image(pipe, req), 0)]


def main(args) -> int:
    """Run the parsed ``infer`` command; bad input prints ``error: ...`` and returns 2."""
    from cosmos_hal.backend import BackendUnavailableError
    from cosmos_hal.infer.errors import InferenceInputError
    from cosmos_hal.models.loading import CheckpointMismatchError

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # diffusers' loading chatter (e.g. the pass-through safety checker's type)
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    try:
        written = run(args)
    except (InferenceInputError, CheckpointMismatchError, BackendUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def cli(argv=None, prog: str = "python -m cosmos_hal") -> int:
    """Parse ``infer ...`` argv and run it (tools/infer.py and tests call this)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["infer"] and len(argv) > 1 and argv[1] not in TASKS and argv[1] not in ("-h", "--help"):
        print(f"{prog}: the task comes first: {prog} video2world|text2world|text2image ... (got '{argv[1]}'). NVIDIA's "
              f"'scripts/hf_video2world.py OUTPUT_DIR --prompt P.txt ...' is '{prog} video2world OUTPUT_DIR --model DIR "
              f"--prompt P.txt ...', hf_text2image.py is '{prog} text2image ...', and diffusers' "
              f"eval_cosmos_predict25_lora.py is '{prog} video2world --model DIR --data_dir ...'", file=sys.stderr)
        return 2
    args = build_parser(prog).parse_args(argv)
    return main(args)
