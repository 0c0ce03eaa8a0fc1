"""Context parallelism (train/context_parallel.py): two gloo processes that each hold half of
the video tokens compute the same loss and, after the data-parallel average, the same gradients
as one process holding them all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from cosmos_hal.bench.flops import Shape
from cosmos_hal.bench.step import build_model, forward_loss, make_inputs
from cosmos_hal.models.presets import get_preset
from cosmos_hal.train import context_parallel as cpmod
from cosmos_hal.train.fast_attention import install_fast_processor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import json, os, sys, torch
    from cosmos_hal import dist
    from cosmos_hal.bench.flops import Shape
    from cosmos_hal.bench.step import build_model, forward_loss, make_inputs
    from cosmos_hal.models.presets import get_preset
    from cosmos_hal.train import ac
    from cosmos_hal.train import context_parallel as cpmod
    from cosmos_hal.train.fast_attention import install_fast_processor

    w = dist.init(timeout_s=120)
    mode, lora = sys.argv[2], int(sys.argv[3])
    preset = get_preset("tiny").replace(num_layers=3)
    shape = Shape(9, 32, 64, text_tokens=16)  # 3 latent frames of 4 x 8, patches of 2 x 2: 24 tokens; 2 heads
    inp = make_inputs(preset, shape, "cpu", seed=3)

    def loss_and_grads(model):
        model.zero_grad(set_to_none=True)
        loss = forward_loss(model, inp, amp_dtype=None, device_type="cpu")
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref = build_model(preset, torch.device("cpu"), lora_rank=lora, seed=1)
    install_fast_processor(ref, device="cpu", dtype=torch.float32)
    r_loss, r_grads = loss_and_grads(ref)  # every rank: the whole sample, no parallelism

    model = build_model(preset, torch.device("cpu"), lora_rank=lora, seed=1)
    install_fast_processor(model, device="cpu", dtype=torch.float32)
    ac.apply_block_ac(model, mode)
    cp = cpmod.make_groups(w.world_size, w.rank, 2)
    n = cpmod.apply_context_parallel(model, cp)
    if sys.argv[4] == "compile":
        from cosmos_hal.train.compile import compile_blocks
        compile_blocks(model, backend="aot_eager")
    seen = []
    # a hook on the block (called outside its compiled graph), after the sharding hook: its input
    model.transformer_blocks[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    c_loss, c_grads = loss_and_grads(model)
    for g in c_grads.values():  # what DDP / FSDP do: average over all ranks
        dist.all_reduce(g, "mean")
    rel = lambda a, b: float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))
    out = dict(rank=w.rank, processors=n, tokens_seen=seen[0], loss_rel=rel(c_loss, r_loss), finite=bool(torch.isfinite(c_loss)),
               names_equal=sorted(c_grads) == sorted(r_grads),
               grad_rel=max(rel(c_grads[k], r_grads[k]) for k in r_grads),
               worst=max(r_grads, key=lambda k: rel(c_grads[k], r_grads[k])))
    with open(os.path.join(sys.argv[1], f"rank{w.rank}.json"), "w") as f:
        json.dump(out, f)
    dist.shutdown()
""")


def _run_two(tmp_path, *args):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_HAL_")}
    env["COSMOS_HAL_BACKEND"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
         "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", str(script), str(tmp_path), *args],
        cwd=REPO, env=env, timeout=280, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode,lora,compiled", [("selective", 0, ""), ("none", 4, ""), ("selective_mm", 0, "compile")])
def test_two_ranks_with_half_the_tokens_each_match_one_rank(tmp_path, mode, lora, compiled):
    """fp32, every parameter; "compile": blocks under torch.compile (aot_eager: dynamo + AOT
    autograd around the all-to-alls, no code generation)."""
    for res in _run_two(tmp_path, mode, str(lora), compiled):
        assert res["processors"] == 3 and res["finite"] and res["names_equal"]
        assert res["tokens_seen"] == 12  # half of the 24 tokens reach each rank's blocks
        assert res["loss_rel"] < 1e-6, res
        assert res["grad_rel"] < 1e-5, res


def test_groups_and_data_parallel_ranks():
    cp = cpmod.make_groups(8, 5, 4)  # no process group here: the layout alone
    assert (cp.size, cp.rank) == (4, 1) and cp.chunk(84480) == (21120, 21120)
    assert cpmod.data_parallel(8, 5, 4) == (1, 2)
    assert cpmod.data_parallel(8, 3, 4) == (0, 2)
    with pytest.raises(ValueError, match="context_parallel=3: must divide the number of processes \\(8\\)"):
        cpmod.make_groups(8, 0, 3)


def test_bad_sizes_are_clear_errors():
    preset = get_preset("tiny").replace(num_layers=2)  # 2 heads
    model = build_model(preset, torch.device("cpu"), lora_rank=0, seed=1)
    with pytest.raises(ValueError, match="needs fast_attention=true"):
        cpmod.apply_context_parallel(model, cpmod.ContextParallel(size=2, rank=0))
    install_fast_processor(model, device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="2 attention heads do not split evenly"):
        cpmod.apply_context_parallel(model, cpmod.ContextParallel(size=4, rank=0))
    model = build_model(preset, torch.device("cpu"), lora_rank=0, seed=1)
    install_fast_processor(model, device="cpu", dtype=torch.float32)
    cpmod.apply_context_parallel(model, cpmod.ContextParallel(size=2, rank=0))
    three_tokens = make_inputs(preset, Shape(9, 16, 16, text_tokens=8), "cpu")  # 3 x 1 x 1 after patching
    with pytest.raises(ValueError, match="context_parallel=2: 3 video tokens do not split evenly"):
        forward_loss(model, three_tokens, amp_dtype=None, device_type="cpu")


@pytest.fixture
def fake_two_rank_group():
    """torch's fake process group (collectives return garbage, shapes are right): rank 0 of 2."""
    import torch.distributed as tdist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if tdist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    tdist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    torch._dynamo.reset()
    try:
        yield cpmod.make_groups(2, 0, 2)
    finally:
        torch._dynamo.reset()
        tdist.destroy_process_group()


@pytest.mark.parametrize("mode", ["selective", "none"])
def test_compiled_cp_blocks_have_no_graph_break_and_share_one_graph(fake_two_rank_group, mode):
    """The all-to-alls are traced into the block's graph (a graph break inside a checkpointed
    block would run the whole block eagerly), and block 0 compiles to the same graph as the
    others: dynamo compiles one frame in all (the block forward; the sharding pre-hook is eager)."""
    from torch._dynamo.utils import counters

    from cosmos_hal.train import ac

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.print_readable(print_output=False))
        return gm.forward

    preset = get_preset("tiny").replace(num_layers=3)
    model = build_model(preset, torch.device("cpu"), lora_rank=0, seed=1)
    install_fast_processor(model, device="cpu", dtype=torch.float32)
    cpmod.apply_context_parallel(model, fake_two_rank_group)
    ac.apply_block_ac(model, mode)
    for block in model.transformer_blocks:
        block.compile(backend=backend)
    counters.clear()
    inp = make_inputs(preset, Shape(9, 32, 64, text_tokens=16), "cpu", seed=3)
    forward_loss(model, inp, amp_dtype=None, device_type="cpu").backward()
    assert dict(counters["graph_break"]) == {}
    assert len(graphs) == 1, [g[:300] for g in graphs]
    calls = [line for g in graphs for line in g.splitlines()
             if "= torch.ops._c10d_functional.all_to_all_single(" in line and not line.lstrip().startswith("#")]
    assert len(calls) == 2, calls  # q/k/v stacked in one, the output in the other


def test_blocks_share_one_slice_of_each_per_token_input(fake_two_rank_group):
    """The per-token timestep embeddings and RoPE tables are sliced once per forward, so the
    slice's backward (a zero-filled gradient of the whole tensor) runs once, not once per block."""
    preset = get_preset("tiny").replace(num_layers=3)
    model = build_model(preset, torch.device("cpu"), lora_rank=0, seed=1)
    install_fast_processor(model, device="cpu", dtype=torch.float32)
    cpmod.apply_context_parallel(model, fake_two_rank_group)
    seen = []
    for block in model.transformer_blocks:  # after the sharding hook: what the block gets
        block.register_forward_pre_hook(lambda m, a: seen.append((a[0].shape[1], id(a[2]), id(a[3]), id(a[4][0]))))
    inp = make_inputs(preset, Shape(9, 32, 64, text_tokens=16), "cpu", seed=3)
    forward_loss(model, inp, amp_dtype=None, device_type="cpu")
    assert len(seen) == 3 and len(set(seen)) == 1 and seen[0][0] == 12, seen
