"""infer's input checks answer before any model is loaded (docs/inference.md: bad input fails fast)."""

from __future__ import annotations

import pytest

from cosmos_hal.infer.checks import check_model_source
from cosmos_hal.infer.errors import InferenceInputError


def _pipeline_folder(root):
    for name in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        (root / name).mkdir(parents=True)
    return root


@pytest.mark.parametrize("flag", ["vae_path", "text_encoder_path"])
def test_a_bad_component_folder_is_named_with_a_pipeline_folder_too(tmp_path, flag):
    model = _pipeline_folder(tmp_path / "pipe")
    (tmp_path / "vae.safetensors").write_bytes(b"x")
    with pytest.raises(InferenceInputError, match=rf"--{flag} .*vae.safetensors: a file, not a folder"):
        check_model_source(model, **{flag: tmp_path / "vae.safetensors"})
    with pytest.raises(InferenceInputError, match=rf"--{flag} .*missing: not found"):
        check_model_source(model, **{flag: tmp_path / "missing"})
    assert check_model_source(model, **{flag: tmp_path / "pipe" / "vae"}) == model


def test_an_nvidia_checkpoint_still_needs_both_folders(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    with pytest.raises(InferenceInputError, match="also pass --vae_path"):
        check_model_source(ckpt)
    with pytest.raises(InferenceInputError, match="--text_encoder_path .*not found"):
        check_model_source(ckpt, vae_path=tmp_path, text_encoder_path=tmp_path / "t5")
