"""Up-front checks of what the user asked for, before any model is loaded.

Why up front: a 14B model takes minutes to load; a height that is not a multiple of 16 or
a missing image should fail in the first second, with a message naming the value.
"""

from __future__ import annotations

from pathlib import Path

from cosmos_hal.infer.errors import InferenceInputError

# Wan VAE: 8x spatial and 4x temporal compression; DiT patch (1, 2, 2).
SPATIAL_MULTIPLE = 16  # 8 (VAE) x 2 (patch)
TEMPORAL_FACTOR = 4
PIPELINE_SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
NVIDIA_SUFFIXES = (".pt", ".pth", ".ckpt")


def check_size(height: int, width: int, num_frames: int | None, temporal_factor: int = TEMPORAL_FACTOR,
               vae: str = "Wan VAE") -> None:
    """Raise unless the VAE and the DiT can take this size.

    ``num_frames`` None means an image (Text2Image). Video needs 4k+1 frames (Wan VAE; 8k+1 for
    Predict1's Cosmos 1.0 VAE, ``temporal_factor`` 8): the VAE keeps the first frame and
    compresses every following 4 (8) into one latent frame.
    """
    for name, value in (("--height", height), ("--width", width)):
        if value <= 0 or value % SPATIAL_MULTIPLE:
            lower = max(SPATIAL_MULTIPLE, value // SPATIAL_MULTIPLE * SPATIAL_MULTIPLE)
            raise InferenceInputError(
                f"{name} {value} is not a positive multiple of {SPATIAL_MULTIPLE} (8x VAE downsampling "
                f"times the DiT's 2x2 patch); use e.g. {lower} or {lower + SPATIAL_MULTIPLE}"
            )
    f = temporal_factor
    if num_frames is not None and (num_frames < 1 or (num_frames - 1) % f):
        k = max(0, (num_frames - 1) // f)
        raise InferenceInputError(
            f"--num_frames {num_frames} is not of the form {f}k+1 (the {vae} encodes the first frame "
            f"alone and then {f} frames per latent frame); use e.g. {f * k + 1} or {f * (k + 1) + 1}"
        )


def is_nvidia_checkpoint(path: Path) -> bool:
    return path.suffix in NVIDIA_SUFFIXES


def check_model_source(model, vae_path=None, text_encoder_path=None) -> Path:
    """The model path, checked: a diffusers pipeline folder, or an NVIDIA checkpoint plus the
    VAE and text-encoder folders it needs."""
    if model is None:
        raise InferenceInputError("no model given: pass --model DIR (a diffusers pipeline folder) or --model FILE.pt")
    path = Path(model)
    for flag, value in (("--vae_path", vae_path), ("--text_encoder_path", text_encoder_path)):
        if value is not None and not Path(value).is_dir():  # before minutes of model loading
            raise InferenceInputError(f"{flag} {value}: " + ("a file, not a folder" if Path(value).exists() else
                                      "not found") + "; give a diffusers folder (config.json and weights)")
    if not path.exists():
        raise InferenceInputError(
            f"--model {path}: not found; give a diffusers pipeline folder (transformer/, vae/, text_encoder/, "
            f"tokenizer/, scheduler/) or an NVIDIA checkpoint (.pt) with --vae_path and --text_encoder_path"
        )
    if path.is_file():
        if not is_nvidia_checkpoint(path):
            raise InferenceInputError(
                f"--model {path}: a file, but not an NVIDIA checkpoint ({', '.join(NVIDIA_SUFFIXES)}); "
                "give a diffusers pipeline folder or a .pt checkpoint"
            )
        for flag, value in (("--vae_path", vae_path), ("--text_encoder_path", text_encoder_path)):
            if value is None:
                raise InferenceInputError(
                    f"--model {path} is an NVIDIA checkpoint, which holds only the DiT: also pass {flag} DIR "
                    "(a diffusers folder: the Wan 2.1 VAE, resp. the T5 encoder with its tokenizer)"
                )
        return path
    if (path / ".metadata").is_file():
        raise InferenceInputError(
            f"--model {path}: a sharded training checkpoint (checkpoint.format=sharded); convert it with "
            f"`python tools/convert_checkpoint.py --to full {path} {path}_full`, then pass --model {path}_full/model.pt"
        )
    if (path / "model.pt").is_file() and (path / "trainer.pt").is_file():
        raise InferenceInputError(
            f"--model {path}: a cosmos_hal training checkpoint folder; pass --model {path}/model.pt with --preset "
            "(the experiment's), --vae_path and --text_encoder_path"
        )
    missing = [name for name in PIPELINE_SUBFOLDERS if not (path / name).is_dir()]
    own = {"vae": vae_path, "text_encoder": text_encoder_path, "tokenizer": text_encoder_path}
    missing = [name for name in missing if own.get(name) is None]
    if missing:
        raise InferenceInputError(
            f"--model {path}: not a diffusers pipeline folder, missing subfolder(s) {', '.join(missing)}; "
            "expected transformer/, vae/, text_encoder/, tokenizer/, scheduler/ (e.g. a "
            "nvidia/Cosmos-Predict2-2B-Video2World download)"
        )
    return path


def check_file(flag: str, path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InferenceInputError(f"{flag} {path}: file not found")
    return path


def names_prompt_file(value: str | None) -> bool:
    """True for a value that is a prompt file's path rather than prompt text: one line ending
    in .txt, as NVIDIA's scripts/hf_video2world.py and hf_text2image.py take in --prompt."""
    return value is not None and "\n" not in value and value.strip().lower().endswith(".txt")


def prompt_text(value: str | None, flag: str) -> str | None:
    """``value`` as given, or the text of the file it names (see ``names_prompt_file``)."""
    if not names_prompt_file(value):
        return value
    path = Path(value.strip())
    if not path.is_file():
        raise InferenceInputError(
            f"{flag} {value}: looks like a prompt file (NVIDIA's hf_*.py scripts take one here), but there is "
            f"no such file; give the path of an existing .txt file, or the prompt text itself")
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise InferenceInputError(f"{flag} {value}: the file is empty; write the prompt into it")
    return text


def read_prompt(prompt: str | None, prompt_file=None, *, flag: str = "--prompt") -> str:
    """The prompt text from ``--prompt`` (text, or a .txt file's path) or ``--prompt_file``
    (exactly one)."""
    if prompt is not None and prompt_file is not None:
        raise InferenceInputError(f"give either {flag} or {flag}_file, not both")
    prompt = prompt_text(prompt, flag)
    if prompt_file is not None:
        prompt = check_file(f"{flag}_file", prompt_file).read_text(encoding="utf-8").strip()
        if not prompt:
            raise InferenceInputError(f"{flag}_file {prompt_file}: the file is empty; write the prompt into it")
    if prompt is None or not prompt.strip():
        raise InferenceInputError(f"no prompt: pass {flag} TEXT or {flag}_file FILE")
    return prompt


VIDEO_SUFFIXES = (".mp4",)
IMAGE_OUT_SUFFIXES = (".png", ".jpg", ".jpeg")


def check_output_suffix(out, *, video: bool) -> None:
    """--out must name the kind of file that will be written (mp4 for video, png/jpg for images)."""
    allowed = VIDEO_SUFFIXES if video else IMAGE_OUT_SUFFIXES
    if Path(out).suffix.lower() not in allowed:
        raise InferenceInputError(
            f"--out {out}: {'a video' if video else 'an image'} is written here; give a file ending in "
            f"{' or '.join(allowed)}"
        )
