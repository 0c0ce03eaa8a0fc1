"""LoKr adapters end to end (issue 14, point 3; seed 002 trains a LyCORIS LoKr of factor 4):
``lora.kind=lokr lora.factor=4`` trains the tiny Text2Image and Video2World experiments on a
saved tiny pipeline, the checkpoint holds only the adapter, inference loads it (``--lora``);
LyCORIS LoKr files load too, and a file in any other layout is refused naming its keys.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_infer_tiny as infer_tiny  # noqa: E402

from cosmos_hal import rng  # noqa: E402
from cosmos_hal.infer.adapters import LoraSpec, load_loras  # noqa: E402
from cosmos_hal.infer.cli import cli  # noqa: E402
from cosmos_hal.infer.errors import InferenceInputError  # noqa: E402
from cosmos_hal.models.dit import build_transformer  # noqa: E402
from kernel_reference import rel_err as _rel  # ||out-ref||/||ref|| in float64; NaN never passes

H, W, T = 32, 48, 5
PROMPT = "a robot arm picks up the red cube"


def _inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 16, 2, 4, 6, generator=g),
                timestep=torch.rand(1, generator=g),
                encoder_hidden_states=torch.randn(1, 7, model.config.text_embed_dim, generator=g),
                padding_mask=torch.zeros(1, 1, 4, 6), return_dict=False)


@pytest.fixture(scope="module", params=["video2world", "text2image"])
def trained(request, tmp_path_factory):
    """4 steps of the tiny experiment with LoKr factor 4 on a saved tiny pipeline's DiT."""
    from cosmos_hal.train import checkpoint as ckpt
    from cosmos_hal.train import experiments
    from cosmos_hal.train.trainer import train

    task = request.param
    root = tmp_path_factory.mktemp(f"lokr_{task}")
    pipe_dir = infer_tiny.save_tiny_pipeline(root / "pipe", task)
    out = root / "run"
    train(experiments.get(f"tiny_{task}_synthetic", [
        f"output_dir={out}", f"model_path={pipe_dir}", "max_iter=4", "save_iter=4", "logging_iter=1",
        "lora.kind=lokr", "lora.factor=4", "lora.rank=4", "optim.lr=1e-2"]))
    return dict(task=task, pipe=pipe_dir, out=out, ckpt=Path(ckpt.latest(str(out / "checkpoints"))))


@pytest.mark.slow
def test_lokr_training_writes_an_adapter_only_checkpoint(trained):
    from safetensors import safe_open

    losses = [json.loads(line)["loss"] for line in (trained["out"] / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(np.isfinite(losses))
    net = torch.load(trained["ckpt"] / "model.pt", map_location="cpu", weights_only=False)["net"]
    assert net and all(".lokr_" in k for k in net)  # the frozen base is not stored
    with safe_open(str(trained["ckpt"] / "pytorch_lora_weights.safetensors"), "pt") as fh:
        keys = list(fh.keys())
        meta = json.loads(fh.metadata()["lora_adapter_metadata"])
        w1 = [fh.get_tensor(k) for k in keys if k.endswith(".lokr_w1")]
    assert keys and all(k.startswith("transformer.") and ".lokr_" in k for k in keys)
    assert meta["transformer.peft_type"] == "LOKR" and meta["transformer.decompose_factor"] == 4
    assert w1 and all(w.abs().sum() > 0 for w in w1)  # trained away from its zero init


@pytest.mark.slow
def test_trained_lokr_loads_for_inference_and_changes_the_output(trained):
    from cosmos_hal.infer.conditioning import load_conditioning
    from cosmos_hal.infer.generate import Request, text2image, video2world
    from cosmos_hal.infer.loader import LoadOptions, load_pipeline

    image = infer_tiny.write_image(trained["out"] / "cond.png", H, W)
    video = trained["task"] == "video2world"
    req = Request(prompt=PROMPT, num_steps=2, height=H, width=W, num_frames=T, seed=4,
                  conditioning=load_conditioning(image=image) if video else {})
    generate = video2world if video else text2image
    base = generate(load_pipeline(LoadOptions(task=trained["task"], model=str(trained["pipe"]))), req)
    adapted_pipe = load_pipeline(LoadOptions(task=trained["task"], model=str(trained["pipe"]),
                                             loras=[LoraSpec(trained["ckpt"])]))
    adapted = generate(adapted_pipe, req)
    assert adapted.shape == base.shape and np.abs(adapted.astype(int) - base.astype(int)).mean() > 0.02

    # at the transformer: ours unfused, ours fused, and diffusers' own loader agree (fp32 rel < 1e-5)
    plain, fused, theirs = (build_transformer(None, weights=trained["pipe"]).eval() for _ in range(3))
    inputs = _inputs(plain, seed=1)
    if video:
        inputs["condition_mask"] = torch.zeros(1, 1, 2, 4, 6)
    load_loras(fused, [LoraSpec(trained["ckpt"])], fuse=True)
    assert not any("lokr" in n for n, _ in fused.named_parameters())
    theirs.load_lora_adapter(str(trained["ckpt"] / "pytorch_lora_weights.safetensors"), prefix="transformer")
    with torch.no_grad():
        y_base, y_ours = plain(**inputs)[0], adapted_pipe.transformer.float()(**inputs)[0]
        assert _rel(y_ours, y_base) > 1e-4
        assert _rel(fused(**inputs)[0], y_ours) < 1e-5
        assert _rel(theirs(**inputs)[0], y_ours) < 1e-5


def _lycoris_file(path, model):
    """A LyCORIS LoKr file as LyCORIS names it: seed 002's full-matrix factor-4 form (alpha
    ignored) on attn1.to_q, a rank-decomposed w2 (scale alpha/rank = 0.5) on ff.net.2."""
    from safetensors.torch import save_file

    k = lambda i: rng.Key(3, "lycoris_test", index=i)  # noqa: E731
    state = {
        "lycoris_transformer_blocks_0_attn1_to_q.lokr_w1": rng.normal(k(0), (4, 4), std=0.1),
        "lycoris_transformer_blocks_0_attn1_to_q.lokr_w2": rng.normal(k(1), (16, 16), std=0.1),
        "lycoris_transformer_blocks_0_attn1_to_q.alpha": torch.tensor(1.0),
        "lycoris_transformer_blocks_1_ff_net_2.lokr_w1": rng.normal(k(2), (4, 4), std=0.1),
        "lycoris_transformer_blocks_1_ff_net_2.lokr_w2_a": rng.normal(k(3), (16, 4), std=0.1),
        "lycoris_transformer_blocks_1_ff_net_2.lokr_w2_b": rng.normal(k(4), (4, 64), std=0.1),
        "lycoris_transformer_blocks_1_ff_net_2.alpha": torch.tensor(2.0),
    }
    save_file(state, str(path))
    s = {key: v.double() for key, v in state.items()}
    want = {
        "transformer_blocks.0.attn1.to_q": torch.kron(s["lycoris_transformer_blocks_0_attn1_to_q.lokr_w1"],
                                                      s["lycoris_transformer_blocks_0_attn1_to_q.lokr_w2"]),
        "transformer_blocks.1.ff.net.2": 0.5 * torch.kron(
            s["lycoris_transformer_blocks_1_ff_net_2.lokr_w1"],
            s["lycoris_transformer_blocks_1_ff_net_2.lokr_w2_a"] @ s["lycoris_transformer_blocks_1_ff_net_2.lokr_w2_b"]),
    }
    return {name: model.get_submodule(name).weight.double() + delta for name, delta in want.items()}


def test_lycoris_lokr_file_loads_and_fuses_to_the_float64_reference(tmp_path):
    file = tmp_path / "pytorch_lora_weights.safetensors"
    want = _lycoris_file(file, build_transformer("tiny", init_seed=2))
    fused, unfused = build_transformer("tiny", init_seed=2).eval(), build_transformer("tiny", init_seed=2).eval()
    load_loras(fused, [LoraSpec(file)], fuse=True)
    for name, ref in want.items():
        assert _rel(fused.get_submodule(name).weight, ref) < 1e-6, name
    assert load_loras(unfused, [LoraSpec(tmp_path)]) == ["lora0"]
    inputs = _inputs(unfused, seed=3)
    inputs["condition_mask"] = torch.zeros(1, 1, 2, 4, 6)
    with torch.no_grad():
        assert _rel(fused(**inputs)[0], unfused(**inputs)[0]) < 1e-5


@pytest.mark.parametrize("keys", [
    ["lora_unet_transformer_blocks_0_attn1_to_q.lora_down.weight", "lora_unet_transformer_blocks_0_attn1_to_q.alpha"],
    ["lycoris_transformer_blocks_0_attn1_to_q.hada_w1_a", "lycoris_transformer_blocks_0_attn1_to_q.hada_w1_b"],
    ["lycoris_transformer_blocks_0_attn9_to_q.lokr_w1", "lycoris_transformer_blocks_0_attn9_to_q.lokr_w2"],
])
def test_adapter_file_in_a_layout_we_cannot_load_is_refused_naming_its_keys(tmp_path, keys, capsys):
    from safetensors.torch import save_file

    file = tmp_path / "pytorch_lora_weights.safetensors"
    save_file({k: torch.zeros(4, 4) for k in keys}, str(file))
    with pytest.raises(InferenceInputError) as info:
        load_loras(build_transformer("tiny", init_seed=2), [LoraSpec(file)])
    message = str(info.value)
    assert str(file) in message and all(k in message for k in keys) and "lokr_w1" in message

    pipe = infer_tiny.save_tiny_pipeline(tmp_path / "pipe", "text2image")
    rc = cli(["infer", "text2image", "--model", str(pipe), "--prompt", PROMPT, "--height", str(H),
              "--width", str(W), "--num_steps", "2", "--lora", str(file), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2 and keys[0] in err and not (tmp_path / "x.png").exists()


def test_experiment_overrides_for_seed_002_lokr_and_their_errors():
    from cosmos_hal.train import experiments

    exp = experiments.get("predict2_text2image_training_2b_cosmos_nemo_assets", [
        "lora.kind=lokr", "lora.factor=4", "lora.rank=10000", "lora.alpha=10000",
        "lora.target_modules=to_q,to_k,to_v,to_out.0"])
    assert (exp.lora.kind, exp.lora.factor, exp.lora.init) == ("lokr", 4, "peft")
    assert experiments.get("tiny_text2image_synthetic").lora.init == "peft"
    for bad, word in ((["lora.kind=lokr", "lora.init=gaussian"], "lora.init"), (["lora.kind=loha"], "lokr"),
                      (["lora.kind=lokr", "lora.factor=0"], "lora.factor=4")):
        with pytest.raises(experiments.ExperimentError, match=word):
            experiments.get("tiny_text2image_synthetic", bad)


@pytest.mark.slow
def test_lokr_run_resumed_from_its_adapter_only_checkpoint_matches_the_uninterrupted_run(tmp_path):
    from cosmos_hal.train import experiments
    from cosmos_hal.train.trainer import train

    def run(out, *extra):
        train(experiments.get("tiny_text2image_synthetic", [
            f"output_dir={out}", "logging_iter=1", "save_iter=2", "schedule.cycle_length=4", "lora.kind=lokr",
            "lora.factor=4", "lora.rank=4", "optim.lr=1e-2", *extra]))
        return {r["iteration"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}

    full = run(tmp_path / "full", "max_iter=4")
    run(tmp_path / "part", "max_iter=2")
    (tmp_path / "part" / "metrics.jsonl").unlink()
    resumed = run(tmp_path / "part", "max_iter=4")
    assert sorted(resumed) == [3, 4] and all(resumed[i] == full[i] for i in (3, 4)), (resumed, full)
