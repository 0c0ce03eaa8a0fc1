"""What `train --check` knows about the paths before any process starts.

Why: the ranks find a missing dataset or weights folder only after torchrun has started and
the model, VAE and optimizer are built, minutes with 14B weights. These checks read folder
listings and small files only (no tensors, no media), and reuse the code the ranks run
(``CosmosDataset``'s listing, ``models.loading``'s folder layout), so what passes here
is what a rank will accept. Relative paths are resolved against the working directory
(train.sh's own folder), as the ranks resolve them.
"""

from __future__ import annotations

import os
from pathlib import Path

from cosmos_hal.train.experiments import Experiment, ExperimentError

MODEL_FORMS = "a diffusers folder (the pipeline folder or its transformer/), a .safetensors file or NVIDIA's .pt"


def check_paths(exp: Experiment) -> None:
    """Raise ExperimentError naming the override (model_path=, vae_path=, dataset_path=, preset=)
    whose target cannot be used, and what it should point at."""
    from cosmos_hal.models import presets

    try:
        preset = presets.get_preset(exp.preset)
    except KeyError as exc:
        raise ExperimentError(f"preset={exp.preset!r}: {exc.args[0]}") from None
    if exp.model_path:
        _check_model(exp.model_path)
    if exp.vae_path:
        _check_vae(exp.vae_path)
    _check_dataset(exp, preset)
    _check_validation(exp, preset)


def _check_validation(exp: Experiment, preset) -> None:
    """validation_every > 0 embeds the prompts with a T5 encoder: one must be findable (the tiny
    synthetic experiment makes its own)."""
    if exp.validation_every <= 0 or (exp.data.synthetic and not exp.dataset_path):
        return
    from cosmos_hal.data.errors import DatasetError
    from cosmos_hal.train import image_data

    try:
        image_data.encoder_path(exp, preset, f"validation_every={exp.validation_every} (to embed validation_prompts)")
    except DatasetError as exc:
        raise ExperimentError(str(exc)) from None


def _where(key: str, value: str) -> str:
    path = Path(value)
    return f"{key}={value}" + ("" if path.is_absolute() else f" ({path.absolute()})")


def _missing(key: str, value: str, want: str) -> ExperimentError:
    return ExperimentError(f"{_where(key, value)}: no such file or folder; give {want}")


def _check_model(value: str) -> None:
    path = Path(value)
    if not path.exists():
        raise _missing("model_path", value, MODEL_FORMS)
    from cosmos_hal.models import loading  # torch: only once there is something to look at

    try:
        path = loading.training_checkpoint_weights(path)  # a training checkpoint folder: its model.pt
    except ValueError as exc:  # a sharded one: the command that converts it
        raise ExperimentError(f"{_where('model_path', value)}: {exc}") from None
    if path.is_dir():
        try:
            loading.diffusers_weight_files(path)
        except (FileNotFoundError, ValueError, KeyError) as exc:  # no config.json / weights, bad index
            raise ExperimentError(f"{_where('model_path', value)}: {exc}; give {MODEL_FORMS}") from None
    elif path.suffix not in (".safetensors", *loading.NVIDIA_SUFFIXES):
        raise ExperimentError(f"{_where('model_path', value)}: unknown weights format {path.suffix!r}; "
                              f"give {MODEL_FORMS}")


def _check_vae(value: str) -> None:
    """A path (as models.vae.build_vae decides: a separator in it, or it exists) must hold a
    diffusers AutoencoderKLWan folder; anything else must be a VAE preset name."""
    from cosmos_hal.models import presets

    if os.sep in value or os.path.exists(value):
        if not os.path.exists(value):
            raise _missing("vae_path", value, "a diffusers AutoencoderKLWan folder")
        from cosmos_hal.models.vae import _vae_dir

        try:
            _vae_dir(Path(value))
        except FileNotFoundError as exc:
            raise ExperimentError(f"{_where('vae_path', value)}: {exc}") from None
        return
    try:
        presets.get_vae_preset(value)
    except KeyError as exc:
        raise ExperimentError(f"vae_path={value}: no such folder here, and {exc.args[0]}") from None


def dataset_needed(exp: Experiment) -> str:
    """The message for an experiment that reads a dataset but was given none."""
    return (f"experiment {exp.name} needs dataset_path=<folder> (videos/, metas/, t5_xxl/ as NVIDIA's "
            f"cosmos_nemo_assets; images/ for text2image, or a flat folder of images with <name>.txt captions: "
            f"data.layout=image_folder)")


def _check_dataset(exp: Experiment, preset) -> None:
    """List the dataset as a rank would (layout, captions, text features; no media decoded)."""
    if not exp.dataset_path:
        if exp.data.synthetic:
            return
        raise ExperimentError(dataset_needed(exp))
    root = Path(exp.dataset_path)
    if not root.exists():
        raise _missing("dataset_path", exp.dataset_path, "the dataset folder (see docs/data.md for the layouts)")
    if not root.is_dir():
        raise ExperimentError(f"{_where('dataset_path', exp.dataset_path)}: a file, not a folder; give the "
                              "folder that holds videos/ or images/")
    from cosmos_hal.data import text_features
    from cosmos_hal.data.datasets import build_dataset
    from cosmos_hal.data.errors import DatasetError
    from cosmos_hal.train import image_data

    if image_data.wanted(exp):  # images listed, captions present, a T5 encoder to embed them (no weights read)
        try:
            return image_data.check(exp, preset)
        except (DatasetError, OSError) as exc:
            raise ExperimentError(f"{_where('dataset_path', exp.dataset_path)}: {_about_root(exc, root)}") from None
    try:
        build_dataset(root, num_frames=exp.data.num_frames, resolution=(exp.data.height, exp.data.width),
                      layout=exp.data.layout, seed=exp.seed, skip_bad_samples=exp.data.skip_bad_samples,
                      text_embed_dim=preset.context_dim, num_tokens=preset.text_max_length,
                      text_features=text_features.for_preset(preset).name, resize_mode=exp.data.resize_mode)
    except (DatasetError, OSError) as exc:
        layout = "" if exp.data.layout == "auto" else (
            f" (the experiment reads data.layout={exp.data.layout}; data.layout=auto goes by what the folder holds)")
        raise ExperimentError(f"{_where('dataset_path', exp.dataset_path)}: {_about_root(exc, root)}{layout}") from None


def _about_root(exc: Exception, root: Path) -> str:
    """The loader's message without its leading "<root>: ", which the caller's
    "dataset_path=<root>:" already says (a file inside the folder stays named)."""
    msg = str(exc)
    for prefix in {f"{root}: ", f"{root.absolute()}: ", f"{root.resolve()}: "}:
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg
