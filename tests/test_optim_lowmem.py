"""Low-memory AdamW (train/optim.py): each storage of the moments against a float64 reference of
its own definition, the bytes it saves, torch AdamW's checkpoint format, and FSDP2 shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from cosmos_hal.train import optim
from conftest import REPO
from kernel_reference import rel_err as rel

FP32_TOL = 1e-5
HP = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def _ref_quant64(x: torch.Tensor, signed: bool) -> torch.Tensor:
    """float64 reference of the blockwise 8-bit store: per 256-block absmax, nearest map entry."""
    code = optim.dynamic_map(signed).double()
    flat = x.double().reshape(-1)
    out = torch.empty_like(flat)
    for s in range(0, flat.numel(), optim.BLOCK):
        blk = flat[s:s + optim.BLOCK]
        amax = blk.abs().max()
        normed = blk / amax if amax > 0 else blk
        idx = (normed[:, None] - code[None, :]).abs().argmin(dim=1)
        out[s:s + optim.BLOCK] = code[idx] * amax
    return out.view(x.shape)


def _store64(x: torch.Tensor, kind: str, signed: bool) -> torch.Tensor:
    """What the optimizer keeps of a float64 moment ``x``, by the definition of each kind."""
    if kind == "bf16":
        return x.to(torch.bfloat16).double()
    if kind == "int8" and x.numel() >= optim.MIN_8BIT_SIZE:
        return _ref_quant64(x.float(), signed)
    return x.float().double()


def _adamw64(p, grads, kind, lr, betas, eps, weight_decay):
    """float64 AdamW (torch's formula) whose moments are stored as ``kind`` between steps."""
    b1, b2 = betas
    p = p.double().clone()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for t, g in enumerate(grads, 1):
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p * (1 - lr * weight_decay) - lr / (1 - b1**t) * m / (v.sqrt() / (1 - b2**t) ** 0.5 + eps)
        m, v = _store64(m, kind, True), _store64(v, kind, False)
    return p, m, v


def _run(kind, p0, grads, **kw):
    p = torch.nn.Parameter(p0.clone())
    opt = optim.CompactAdamW([p], **HP, state_dtype=DTYPES[kind], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt


def _draw(n=8192, steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    p0 = torch.randn(n // 64, 64, generator=g)
    grads = [torch.randn(n // 64, 64, generator=g) * (0.1 + i) for i in range(steps)]
    return p0, grads


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8"])
def test_one_step_equals_the_float64_reference(kind):
    """The first step uses the fp32 moments it just computed, whatever they are stored as."""
    p0, grads = _draw(steps=1)
    p, opt = _run(kind, p0, grads)
    ref, m, v = _adamw64(p0, grads, kind, **HP)
    assert rel(p, ref) < FP32_TOL
    st = opt.state[next(iter(opt.state))]
    assert rel(st["m"].get(), m) < FP32_TOL and rel(st["v"].get(), v) < FP32_TOL


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8"])
def test_three_steps_read_back_what_was_stored(kind):
    p0, grads = _draw(steps=3)
    p, _ = _run(kind, p0, grads)
    ref, _, _ = _adamw64(p0, grads, kind, **HP)
    assert rel(p, ref) < FP32_TOL


def test_fp32_state_in_host_memory_equals_torch_adamw():
    """memory=offload_optimizer's optimizer: fp32 moments kept on the host, the same steps as torch."""
    p0, grads = _draw(steps=4)
    p, opt = _run("fp32", p0, grads, state_device="cpu")
    ref = torch.nn.Parameter(p0.clone())
    topt = torch.optim.AdamW([ref], **HP)
    for g in grads:
        ref.grad = g.clone()
        topt.step()
    assert rel(p, ref.detach()) < FP32_TOL
    st = opt.state[next(iter(opt.state))]
    assert st["m"].data.device == torch.device("cpu")


def test_state_bytes_bf16_half_and_8bit_about_a_quarter():
    p0, grads = _draw(n=65536, steps=1)
    sizes = {k: _run(k, p0, grads)[1].state_bytes() for k in DTYPES}
    assert sizes["fp32"] == 2 * 4 * 65536
    assert sizes["bf16"] * 2 == sizes["fp32"]
    assert 0.25 <= sizes["int8"] / sizes["fp32"] <= 0.26, sizes


def test_small_tensors_keep_fp32_moments_in_8bit_mode():
    """As bitsandbytes (min_8bit_size 4096): small tensors are not worth quantising."""
    p, opt = _run("int8", torch.ones(10), [torch.ones(10)])
    assert opt.state_bytes() == 2 * 4 * 10


@pytest.mark.parametrize("kind", ["bf16", "int8"])
def test_checkpoint_is_torch_adamw_format_both_ways(kind):
    """state_dict() is torch AdamW's (fp32 exp_avg/exp_avg_sq like the parameter): torch AdamW
    loads it, and a reloaded CompactAdamW continues exactly as the one that saved."""
    p0, grads = _draw(steps=3)
    p, opt = _run(kind, p0, grads[:2])
    sd = opt.state_dict()
    st = sd["state"][0]
    assert st["exp_avg"].dtype == torch.float32 and st["exp_avg"].shape == p0.shape and float(st["step"]) == 2
    torch.optim.AdamW([torch.nn.Parameter(p.clone())], **HP).load_state_dict(sd)
    q = torch.nn.Parameter(p.clone())
    again = optim.CompactAdamW([q], **HP, state_dtype=DTYPES[kind])
    again.load_state_dict(sd)
    q.grad = grads[2].clone()
    again.step()
    p_cont, _ = _run(kind, p0, grads)
    # 8-bit: reloading re-quantises the dequantised moments; a block whose absmax element is
    # negative comes back at 0.993 x its scale (the signed map's lowest code, as bitsandbytes'),
    # so a few codes move by one step: a resume differs by about that much, not more
    assert rel(q.detach(), p_cont) < (FP32_TOL if kind == "bf16" else 1e-4)


def test_build_optimizer_follows_the_experiment():
    from cosmos_hal.train import experiments

    exp = experiments.get("tiny_video2world_synthetic", ["optim.name=adamw_8bit"])
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = optim.build_optimizer(params, exp.optim)
    assert isinstance(opt, optim.CompactAdamW) and opt.state_dtype == torch.int8
    host = optim.build_optimizer(params, experiments.get("tiny_video2world_synthetic").optim, offload=True)
    assert isinstance(host, optim.CompactAdamW) and host.state_device == torch.device("cpu")
    with pytest.raises(experiments.ExperimentError, match="optim.name='adam8'.*adamw_8bit"):
        experiments.get("tiny_video2world_synthetic", ["optim.name=adam8"])


FSDP_SCRIPT = r"""
import json, sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict, StateDictOptions
from cosmos_hal.train.optim import CompactAdamW

KIND = {"bf16": torch.bfloat16, "int8": torch.int8}[sys.argv[2]]
dist.init_process_group("gloo")
rank = dist.get_rank()

def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 64), torch.nn.Linear(64, 256))  # rows of 256: block-aligned shards

def grads(m, step):
    g = torch.Generator().manual_seed(100 + step)
    for p in m.parameters():
        p.grad = torch.randn(p.shape, generator=g)

def shard_grads(m, full):
    for p, f in zip(m.parameters(), full.parameters()):
        from torch.distributed.tensor import distribute_tensor
        p.grad = distribute_tensor(f.grad, p.device_mesh, p.placements)

one = model()
opt1 = CompactAdamW(one.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, state_dtype=KIND)
sharded = model()
for layer in sharded:
    fully_shard(layer)
fully_shard(sharded)
opt2 = CompactAdamW(sharded.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, state_dtype=KIND)
for step in range(3):
    grads(one, step)
    shard_grads(sharded, one)
    opt1.step(); opt2.step()
full_sd = get_optimizer_state_dict(sharded, opt2, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if rank == 0:  # as train/checkpoint.py: rank 0 writes the full state, every rank reads the file
    torch.save(full_sd, f"{sys.argv[1]}/optim.pt")
dist.barrier()
full_sd = torch.load(f"{sys.argv[1]}/optim.pt", weights_only=False)
again = model()
for layer in again:
    fully_shard(layer)
fully_shard(again)
with torch.no_grad():
    for p, q in zip(again.parameters(), sharded.parameters()):
        p.to_local().copy_(q.to_local())
opt3 = CompactAdamW(again.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, state_dtype=KIND)
set_optimizer_state_dict(again, opt3, optim_state_dict=full_sd, options=StateDictOptions(full_state_dict=True))
grads(one, 3)
shard_grads(sharded, one)
shard_grads(again, one)
opt1.step(); opt2.step(); opt3.step()
def err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())
out = {"sharded": max(err(q.full_tensor(), p) for p, q in zip(one.parameters(), sharded.parameters())),
       "resumed": max(err(q.full_tensor(), p) for p, q in zip(one.parameters(), again.parameters())),
       "state_full_shape": list(full_sd["state"]["0.weight"]["exp_avg"].shape)}
json.dump(out, open(f"{sys.argv[1]}/rank{rank}.json", "w"))
dist.barrier()  # as cosmos_hal.dist.shutdown: no rank tears gloo down while its peer still talks
dist.destroy_process_group()
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["bf16", "int8"])
def test_fsdp2_shards_on_two_gloo_ranks_equal_one_process_and_resume(tmp_path, kind):
    """Each rank steps its own shard (block-aligned here, so the 8-bit blocks are the same as
    unsharded): parameters equal one process's; a full optimizer state dict gathered by FSDP2
    and scattered into a fresh optimizer continues the same."""
    script = tmp_path / "worker.py"
    script.write_text(FSDP_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_HAL_")}
    env["COSMOS_HAL_BACKEND"] = "cpu"
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
         "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", str(script), str(tmp_path), kind],
        cwd=REPO, env=env, timeout=280, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    for r in range(2):
        res = json.loads((tmp_path / f"rank{r}.json").read_text())
        # resumed 8-bit: one re-quantisation of the reloaded moments (see the checkpoint test above)
        assert res["sharded"] < FP32_TOL and res["resumed"] < (FP32_TOL if kind == "bf16" else 1e-3), res
        assert res["state_full_shape"] == [64, 256]
