"""Issue #17 point 3: seed 004's Cosmos-Predict1 experiments by name (upstream's hyper-parameters,
`train --check` passes for each), LoRA on the first N blocks' q/v, and the tiny Predict1 run: it
trains on the CPU with falling loss, and tools/loss_parity.py compares it with a log in upstream's
``iter_speed ... | Loss:`` format (a pass for the same numbers, a fail for different ones)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cosmos_hal.train import experiments

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "loss_parity.py"

# The seed's commands name these (text2world); video2world: upstream's post-training_diffusion_video2world.md
SEED004 = [
    "text2world_7b_example_cosmos_nemo_assets", "text2world_7b_example_cosmos_nemo_assets_4gpu_80gb",
    "text2world_7b_example_cosmos_nemo_assets_8gpu_40gb", "text2world_7b_example_cosmos_nemo_assets_4gpu_40gb",
    "text2world_7b_lora_example_cosmos_nemo_assets", "text2world_14b_example_cosmos_nemo_assets",
]
VIDEO2WORLD = ["video2world_7b_example_cosmos_nemo_assets", "video2world_7b_lora_example_cosmos_nemo_assets"]

# name: (frames, height, width, lr, eps, weight_decay, EMA, upstream context parallel, loss_scale, text dropout)
UPSTREAM = {
    "text2world_7b_example_cosmos_nemo_assets": (121, 720, 1280, 2**-14.3, 1e-10, 0.1, True, 1, 1.0, 0.0),
    "text2world_7b_example_cosmos_nemo_assets_4gpu_80gb": (121, 384, 384, 2**-14.3, 1e-10, 0.1, True, 4, 1.0, 0.0),
    "text2world_7b_example_cosmos_nemo_assets_8gpu_40gb": (33, 384, 384, 2**-14.3, 1e-10, 0.1, False, 1, 1.0, 0.0),
    "text2world_7b_example_cosmos_nemo_assets_4gpu_40gb": (17, 384, 384, 2**-14.3, 1e-10, 0.1, False, 1, 1.0, 0.0),
    "text2world_14b_example_cosmos_nemo_assets": (121, 720, 1280, 2**-16, 1e-11, 0.2, True, 16, 10.0, 0.0),
    "text2world_7b_lora_example_cosmos_nemo_assets": (121, 480, 848, 1e-4, 1e-10, 0.1, True, 4, 1.0, 0.2),
    "video2world_7b_example_cosmos_nemo_assets": (121, 720, 1280, 2**-14.3, 1e-10, 0.1, True, 1, 1.0, 0.2),
    "video2world_7b_lora_example_cosmos_nemo_assets": (121, 720, 1280, 1e-4, 1e-10, 0.1, True, 4, 1.0, 0.2),
}


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_experiment_carries_upstreams_values(name):
    exp = experiments.get(name)
    frames, h, w, lr, eps, wd, ema, cp, scale, text_dropout = UPSTREAM[name]
    assert (exp.data.num_frames, exp.data.height, exp.data.width) == (frames, h, w)
    assert (exp.optim.lr, exp.optim.eps, exp.optim.weight_decay, exp.optim.betas) == (lr, eps, wd, (0.9, 0.99))
    assert exp.ema.enabled is ema and exp.upstream_context_parallel == cp and exp.batch_size == 1
    assert exp.loss.recipe == "predict1" and exp.loss.loss_scale == scale and exp.loss.text_dropout == text_dropout
    assert (exp.loss.p_mean, exp.loss.p_std, exp.loss.sigma_data, exp.loss.logvar) == (0.0, 1.0, 0.5, True)
    video = name.startswith("video2world")
    assert exp.task == ("video2world" if video else "text2world")
    assert exp.loss.adjust_video_noise is (video or "14b" in name)
    lora = "_lora_" in name
    assert exp.parallelism == ("ddp" if lora else "fsdp")
    assert (exp.max_iter, exp.save_iter) == ((5000, 1000) if lora else (2000, 200))
    if lora:
        assert (exp.lora.kind, exp.lora.rank, exp.lora.alpha, exp.lora.first_nblocks) == ("lora", 8, 8, 28)
        assert exp.lora.target_modules == "to_q,to_v" and exp.schedule.warmup_steps == 0
    else:
        assert (exp.lora.kind, exp.schedule.warmup_steps, exp.schedule.f_start) == ("none", 2500, 1e-6)
    if "14b" in name:
        assert (exp.schedule.f_min, exp.schedule.cycle_length) == (0.1, 90000)
    else:
        assert exp.schedule.f_min == exp.schedule.f_max == 1.0
    if video:
        assert (exp.loss.min_cond_frames, exp.loss.max_cond_frames, exp.loss.cond_dropout) == (0, 2, 0.0)
        assert (exp.loss.augment_p_mean, exp.loss.augment_p_std, exp.loss.augment_multiplier) == (-3.0, 2.0, 1.0)


@pytest.mark.parametrize("name", SEED004 + VIDEO2WORLD)
def test_train_check_passes_for_each_experiment(name, tmp_path, capsys):
    """What train.sh runs before torchrun; the seed's dataset lives in upstream's config, here it is
    dataset_path= (docs/porting.md)."""
    from cosmos_hal.__main__ import main
    from cosmos_hal.data.synthetic import make_synthetic_dataset

    assert main(["train", "--check", f"--EXP={name}", "--backend=cpu", f"output_dir={tmp_path}"]) == 2
    assert "needs dataset_path=<folder>" in capsys.readouterr().err
    data = tmp_path / "datasets" / "cosmos_nemo_assets"
    make_synthetic_dataset(data, layout="nemo", num_videos=1, num_frames=9, height=32, width=32,
                           text_embed_dim=16, num_tokens=8)
    assert main(["train", "--check", f"--EXP={name}", "--backend=cpu", f"output_dir={tmp_path}",
                 f"dataset_path={data}"]) == 0
    assert f"OUT_DIR={tmp_path}" in capsys.readouterr().out


def test_lora_first_nblocks_adapts_q_and_v_of_the_first_blocks_only():
    """get_fa_ca_qv_lora_config(first_nblocks=N): FA (attn1) and CA (attn2) to_q and to_v of
    blocks 0..N-1, nothing else; the logvar head stays frozen under LoRA."""
    import torch

    from cosmos_hal.train.trainer import build_model

    exp = experiments.get("tiny_predict1_text2world_synthetic",
                          ["lora.kind=lora", "lora.rank=4", "lora.alpha=4", "lora.target_modules=to_q,to_v",
                           "lora.first_nblocks=1"])
    model, _ = build_model(exp, torch.device("cpu"))
    adapted = sorted({n.split(".lora_")[0] for n, p in model.named_parameters() if p.requires_grad})
    assert adapted == [f"transformer_blocks.0.{a}.{m}" for a in ("attn1", "attn2") for m in ("to_q", "to_v")]
    assert not model.logvar.linear.weight.requires_grad


# -- the tiny run and loss parity against an upstream-format log ----------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """bash train.sh --EXP=tiny_predict1_text2world_synthetic, as a user types it."""
    out = tmp_path_factory.mktemp("tiny_predict1")
    proc = subprocess.run(["bash", str(REPO / "train.sh"), "--EXP=tiny_predict1_text2world_synthetic",
                           "--backend=cpu", f"output_dir={out}"], capture_output=True, text=True, timeout=900,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "metrics.jsonl") as fh:
        records = [json.loads(line) for line in fh]
    return out, records, proc.stdout


@pytest.mark.slow
def test_tiny_predict1_trains_with_falling_loss(tiny_run):
    out, records, stdout = tiny_run
    losses = [r["loss"] for r in records]
    assert [r["iteration"] for r in records] == list(range(5, 61, 5))
    assert all(map(lambda x: x == x, losses))  # no NaN
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert "recipe=predict1" in stdout and "task=text2world" in stdout
    assert (out / "checkpoints" / "iter_000000060" / "model.pt").exists()
    # the EMA weights load into the DiT for inference; the logvar head (training only) is left out
    from cosmos_hal.models.dit import build_transformer
    from cosmos_hal.train.checkpoint import ema_weights

    weights = ema_weights(str(out / "checkpoints" / "iter_000000060"))
    assert not [k for k in weights if k.startswith("logvar.")]
    build_transformer("tiny-predict1-text2world", weights=weights)
    # and the checkpoint folder as model_path (continuing, or inference): the DiT from its weights,
    # the logvar head from its trained one
    from cosmos_hal.train import loss as L

    folder = str(out / "checkpoints" / "iter_000000060")
    build_transformer("tiny-predict1-text2world", weights=folder)
    head = L.LogVarHead(seed=123)
    assert L.load_upstream_logvar(head, folder)
    import torch

    trained = torch.load(out / "checkpoints" / "iter_000000060" / "model.pt", weights_only=False)["net"]
    assert torch.equal(head.linear.weight.detach(), trained["logvar.linear.weight"])


def upstream_log(records, offset: float = 0.0) -> str:
    """cosmos-predict1's IterSpeed lines (callbacks/iter_speed.py, every_n 10, hit_thres 0) for
    these losses, 4 decimals, as the seed's log prints them."""
    head = "[04-03 09:07:39|INFO|cosmos_predict1/diffusion/training/callbacks/iter_speed.py:80:every_n_impl] "
    return "".join(f"{head}{r['iteration']} : iter_speed 7.82 seconds per iteration | Loss: {r['loss'] + offset:.4f}\n"
                   for r in records)


@pytest.mark.slow
def test_loss_parity_reads_predict1_logs_and_tells_same_from_different(tiny_run, tmp_path):
    out, records, _ = tiny_run
    same = tmp_path / "upstream_same.log"
    same.write_text(upstream_log(records))
    off = tmp_path / "upstream_off.log"
    off.write_text(upstream_log(records, offset=0.25))

    def parity(ref):
        return subprocess.run([sys.executable, str(TOOL), str(out / "metrics.jsonl"), str(ref), "--no-plot",
                               "--window", "4", "--atol", "1e-3", "--json"], capture_output=True, text=True,
                              timeout=120)

    ok, bad = parity(same), parity(off)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["verdict"] == "pass" and report["b"]["format"] == "cosmos"
    assert report["shared_steps"] == len(records)
    assert bad.returncode == 1 and json.loads(bad.stdout)["verdict"] == "fail"


@pytest.mark.slow
def test_predict1_loss_is_the_same_on_two_fsdp_ranks_as_on_one_process(tmp_path):
    """The logvar head is sharded on its own (the loss calls it outside the DiT's forward) and the
    draws are keyed by global sample: 2 FSDP2 ranks of batch 2 log one process of batch 4's losses."""
    common = ["--EXP=tiny_video2world_synthetic", "--backend=cpu", "task=text2world", "preset=tiny-t2i",
              "loss.recipe=predict1", "loss.loss_scale=1", "max_iter=4", "logging_iter=2", "save_iter=4"]

    def losses(out, *extra):
        proc = subprocess.run(["bash", str(REPO / "train.sh"), *common, f"output_dir={out}", *extra],
                              capture_output=True, text=True, timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        with open(out / "metrics.jsonl") as fh:
            return [json.loads(line)["loss"] for line in fh]

    one = losses(tmp_path / "one", "batch_size=4")
    two = losses(tmp_path / "two", "--nproc_per_node=2", "parallelism=fsdp", "batch_size=2")
    assert len(one) == len(two) == 2
    assert all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(two, one)), (one, two)


@pytest.mark.parametrize("name", SEED004)
def test_the_seeds_launch_arguments_given_to_train_sh_name_our_command(name):
    """The seed's `torchrun ... -m cosmos_predict1.diffusion.training.train --config=... -- experiment=NAME`,
    its arguments handed to train.sh: refused at once (exit 2) with the command to type instead."""
    def first_error(*args):
        proc = subprocess.run(["bash", str(REPO / "train.sh"), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        return proc.stderr.splitlines()[0]

    assert f"here: bash train.sh --EXP={name} dataset_path=DIR model_path=FILE" in \
        first_error("--nproc_per_node=8", "--", f"experiment={name}")
    assert "here the experiment's name picks its whole recipe: bash train.sh --EXP=NAME" in \
        first_error("--config=cosmos_predict1/diffusion/training/config/config.py", "--", f"experiment={name}")
