"""Predict2.5 text features: Cosmos-Reason1 (Qwen2.5-VL) features as diffusers' Cosmos2.5
pipeline makes them, the tool that caches them, and the loader's per-encoder padding rule.

The reference is diffusers' own ``Cosmos2_5_PredictBasePipeline._get_prompt_embeds``, called
on a minimal object holding a tiny random Qwen2.5-VL and a word-level tokenizer with a
Qwen-style chat template, both built here (nothing downloaded)."""

from __future__ import annotations

import pickle
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cosmos_hal.data.datasets import build_dataset
from cosmos_hal.data.errors import BadSampleError, DatasetError
from cosmos_hal.data.synthetic import make_synthetic_dataset
from cosmos_hal.data.t5_pickle import write_t5_pickle
from cosmos_hal.models.text import encode_reason1_prompts, load_reason1_encoder

sys.path.insert(0, str(Path(__file__).parent))
from test_tools_data import _tool, tiny_vae  # noqa: E402,F401  (tool runner, tiny Wan VAE fixture)
from kernel_reference import rel_err as _rel  # ||out-ref||/||ref|| in float64; NaN never passes

LAYERS, HIDDEN = 3, 32  # features: 3 x 32 = 96, what the tiny-2.5 DiT projects
FEAT = LAYERS * HIDDEN
MAX_LEN = 512  # the pipeline's max_sequence_length
WORDS = ("You are a helpful assistant who will provide prompts to an image generator . system user "
         "the robot arm is performing task red green blue square circle moving up down left right").split()
# Qwen2.5-VL's chat template, text parts only
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'text' %}"
        "{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def reason1_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL and tokenizer saved like nvidia/Cosmos-Reason1-7B (one folder)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    vocab = {t: i for i, t in enumerate(special)}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   unk_token="<unk>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHAT
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=HIDDEN,
                           fullatt_block_indexes=[0]),
    )
    root = tmp_path_factory.mktemp("reason1")
    with torch.random.fork_rng():  # the random init must not shift other tests' draws
        torch.manual_seed(0)
        Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(root)
    fast.save_pretrained(root)
    return root


def diffusers_features(encoder, tokenizer, prompts, dtype=None):
    """diffusers' Cosmos2_5_PredictBasePipeline._get_prompt_embeds, bound to a minimal pipeline."""
    from diffusers import Cosmos2_5_PredictBasePipeline

    pipe = SimpleNamespace(text_encoder=encoder, tokenizer=tokenizer, _execution_device=torch.device("cpu"))
    with torch.no_grad():
        return Cosmos2_5_PredictBasePipeline._get_prompt_embeds(pipe, prompt=prompts, max_sequence_length=MAX_LEN,
                                                                device=torch.device("cpu"), dtype=dtype)


PROMPTS = ["the robot arm is moving left", "a red square moving up and a green circle moving down"]


def test_reason1_features_match_diffusers_cosmos25_pipeline(reason1_dir):
    encoder, tokenizer = load_reason1_encoder(reason1_dir, dtype=torch.float32)
    ours = encode_reason1_prompts(encoder, tokenizer, PROMPTS)
    ref = diffusers_features(encoder, tokenizer, PROMPTS)
    assert ours.shape == ref.shape == (2, MAX_LEN, FEAT)
    assert _rel(ours, ref) < 1e-5
    # against a float64 run of the same pipeline function
    ref64 = diffusers_features(encoder.to(torch.float64), tokenizer, PROMPTS)
    assert _rel(ours, ref64) < 1e-5
    # pad positions carry features (no attention mask): nothing is zeroed
    assert (ours[:, -1].abs().sum(-1) > 0).all()


def test_reason1_features_in_bf16_follow_the_pipeline_in_bf16(reason1_dir):
    encoder, tokenizer = load_reason1_encoder(reason1_dir, dtype=torch.bfloat16)
    ours = encode_reason1_prompts(encoder, tokenizer, PROMPTS[:1])
    assert ours.dtype == torch.bfloat16
    assert _rel(ours, diffusers_features(encoder, tokenizer, PROMPTS[:1])) < 1e-2
    assert _rel(ours, diffusers_features(encoder.to(torch.float64), tokenizer, PROMPTS[:1])) < 1e-2


def test_reason1_loader_names_a_t5_folder(tmp_path):
    from transformers import T5Config, T5EncoderModel

    T5EncoderModel(T5Config(vocab_size=8, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 't5'.*use --encoder t5"):
        load_reason1_encoder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no Cosmos-Reason1 encoder"):
        load_reason1_encoder(tmp_path / "absent")


@pytest.fixture
def gr1_without_features(tmp_path):
    root = make_synthetic_dataset(tmp_path / "gr1", layout="gr1", num_videos=2, num_frames=9, height=32, width=32,
                                  text_embed_dim=FEAT, num_tokens=8)
    shutil.rmtree(root / "t5_xxl")
    shutil.rmtree(root / "metas")
    return root


def test_get_text_embeddings_reason1_writes_pipeline_features_the_loader_feeds_unchanged(
        gr1_without_features, reason1_dir, capsys):
    root = gr1_without_features
    main = _tool("get_text_embeddings")
    assert main(["--encoder", "reason1", "--dataset_path", str(root), "--encoder_path", str(reason1_dir),
                 "--device", "cpu", "--dtype", "float32",
                 "--prompt_prefix", "The robot arm is performing a task. "]) == 0
    out = capsys.readouterr()
    assert "reason1: 2 written, 0 kept" in out.out and "Cosmos-Reason1 features" in out.err  # progress bar
    encoder, tokenizer = load_reason1_encoder(reason1_dir, dtype=torch.float32)
    ds = build_dataset(root, num_frames=9, text_features="reason1", text_embed_dim=FEAT)
    for i, stem in enumerate(("synthetic_0000", "synthetic_0001")):
        stored = pickle.loads((root / "reason1" / f"{stem}.pickle").read_bytes())
        assert isinstance(stored, list) and stored[0].dtype == np.float16 and stored[0].shape == (MAX_LEN, FEAT)
        caption = (root / "metas" / f"{stem}.txt").read_text().strip()
        assert caption.startswith("The robot arm is performing a task. ")
        ref = diffusers_features(encoder.to(torch.float64), tokenizer, [caption])[0]
        item = ds[i]
        assert _rel(item["t5_text_embeddings"], ref) < 2e-3  # float16 storage
        assert item["t5_text_mask"].sum() == MAX_LEN  # every position is real to the DiT
    assert main(["--encoder", "reason1", "--dataset_path", str(root), "--encoder_path", str(reason1_dir),
                 "--device", "cpu"]) == 0
    assert "0 written, 2 kept" in capsys.readouterr().out


def test_trimmed_reason1_file_is_refused_not_zero_padded(gr1_without_features):
    root = gr1_without_features
    for i in range(2):
        write_t5_pickle(root / "reason1" / f"synthetic_{i:04d}.pickle", np.ones((MAX_LEN, FEAT), np.float32))
    trimmed = root / "reason1" / "synthetic_0001.pickle"
    write_t5_pickle(trimmed, np.ones((7, FEAT), np.float32))
    (root / "metas").mkdir()  # captions come from metadata.csv
    ds = build_dataset(root, num_frames=9, text_features="reason1", text_embed_dim=FEAT)
    assert ds[0]["t5_text_embeddings"].shape == (MAX_LEN, FEAT)
    with pytest.raises(BadSampleError, match="7 positions, not 512.*pad positions") as err:
        ds[1]
    assert str(trimmed) in str(err.value) and "get_text_embeddings.py --encoder reason1" in str(err.value)


def test_trimmed_t5_file_is_still_zero_padded_as_the_predict2_pipeline_zeroes_pads(gr1_without_features):
    root = gr1_without_features
    for i in range(2):
        write_t5_pickle(root / "t5_xxl" / f"synthetic_{i:04d}.pickle", np.ones((7, FEAT), np.float32))
    item = build_dataset(root, num_frames=9)[0]
    assert item["t5_text_embeddings"][7:].abs().sum() == 0 and item["t5_text_mask"].sum() == 7


def test_dataset_without_any_reason1_features_says_the_command(gr1_without_features):
    with pytest.raises(DatasetError, match="no Cosmos-Reason1 text embeddings") as err:
        build_dataset(gr1_without_features, num_frames=9, text_features="reason1", skip_bad_samples=True)
    assert (f"python tools/get_text_embeddings.py --encoder reason1 --dataset_path {gr1_without_features}"
            in str(err.value))


# -- training reads what the Predict2.5 DiT needs ---------------------------------------------------


def _gr1_experiment(root, out, *overrides):
    from cosmos_hal.train import experiments

    return experiments.get("predict25_video2world_lora_rank8_gr1", [f"output_dir={out}", f"dataset_path={root}",
                                                                     *overrides])


def test_predict25_training_without_reason1_features_stops_before_building_the_model(gr1_without_features, tmp_path):
    from cosmos_hal.train.trainer import train

    # model_path does not exist: had the 2B DiT been built first, this would fail on it instead
    exp = _gr1_experiment(gr1_without_features, tmp_path / "out", f"model_path={tmp_path / 'no_weights'}")
    with pytest.raises(DatasetError, match="no Cosmos-Reason1 text embeddings") as err:
        train(exp)
    assert f"--encoder reason1 --dataset_path {gr1_without_features}" in str(err.value)


@pytest.mark.slow
def test_tiny_predict25_trains_on_the_reason1_features_the_tool_wrote(gr1_without_features, reason1_dir, tmp_path):
    from cosmos_hal.train.trainer import train

    root = gr1_without_features
    _tool("get_text_embeddings")(["--encoder", "reason1", "--dataset_path", str(root), "--encoder_path",
                                  str(reason1_dir), "--device", "cpu"])
    (root / "t5_xxl").mkdir()  # T5 files of the wrong width must not be read instead
    for i in range(2):
        write_t5_pickle(root / "t5_xxl" / f"synthetic_{i:04d}.pickle", np.ones((7, 64), np.float32))
    summary = train(_gr1_experiment(root, tmp_path / "out", "preset=tiny-2.5", "data.num_frames=9", "data.height=32",
                                    "data.width=32", "max_iter=2", "logging_iter=1", "save_iter=2", "precision=fp32",
                                    "activation_checkpointing=false", "fast=off"))
    assert summary["iterations"] == 2 and np.isfinite(summary["final_loss"]) and summary["bad_samples"] == 0


def test_encode_latents_reads_a_predict25_dataset_with_text_features_reason1(tmp_path, tiny_vae, capsys):
    root = make_synthetic_dataset(tmp_path / "gr1", layout="gr1", num_videos=1, num_frames=5, height=32, width=32,
                                  text_embed_dim=8, num_tokens=MAX_LEN, features_folder="reason1")
    argv = ["--dataset_path", str(root), "--vae_path", str(tiny_vae), "--cache_dir", str(tmp_path / "c"),
            "--num_frames", "5", "--height", "32", "--width", "32", "--device", "cpu"]
    with pytest.raises(DatasetError, match="no T5 text embeddings"):
        _tool("encode_latents")(argv)
    assert _tool("encode_latents")(argv + ["--text_features", "reason1"]) == 0
    assert "latents: 1 encoded" in capsys.readouterr().out
