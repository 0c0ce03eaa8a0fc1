"""T5 prompt embeddings as the Cosmos2 pipelines make them (tiny T5 built here)."""

import pytest
import torch

from cosmos_hal.models.text import encode_prompts, load_text_encoder

WORDS = "a robot arm picks up the red cube and puts it in box slowly camera moves left".split()


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    root = tmp_path_factory.mktemp("t5pipe")
    fast.save_pretrained(root / "tokenizer")
    cfg = T5Config(vocab_size=len(vocab), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)
    with torch.random.fork_rng():  # the random init must not shift other tests' draws
        torch.manual_seed(0)
        T5EncoderModel(cfg).save_pretrained(root / "text_encoder")
    return root


def test_embeddings_are_padded_to_512_and_zero_after_the_prompt(t5_dir):
    encoder, tokenizer = load_text_encoder(t5_dir)
    prompts = ["a robot arm picks up the red cube", "camera moves left"]
    emb, mask = encode_prompts(encoder, tokenizer, prompts, return_mask=True)
    assert emb.shape == (2, 512, 32) and torch.isfinite(emb).all()
    lengths = mask.sum(1).tolist()
    assert lengths == [9, 4]  # words + </s>
    for i, n in enumerate(lengths):
        assert torch.count_nonzero(emb[i, n:]) == 0
        assert (emb[i, :n].abs().sum(-1) > 0).all()
        # Masked padding must not change the valid positions: compare with the prompt alone.
        ids = tokenizer(prompts[i], return_tensors="pt").input_ids
        with torch.no_grad():
            ref = encoder(ids).last_hidden_state[0].double()
        rel = ((emb[i, :n].double() - ref).norm() / ref.norm()).item()
        assert rel < 1e-5, rel


def test_long_prompts_truncate_to_max_length(t5_dir):
    encoder, tokenizer = load_text_encoder(t5_dir)
    emb = encode_prompts(encoder, tokenizer, " ".join(WORDS * 3), max_length=16, dtype=torch.bfloat16)
    assert emb.shape == (1, 16, 32) and emb.dtype == torch.bfloat16
    assert (emb[0].abs().sum(-1) > 0).all()


def test_missing_encoder_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_encoder/config.json"):
        load_text_encoder(tmp_path)
