"""cosmos_hal.attention: every implementation, forward and backward, against float64.

Tolerances (stated once, kernel_reference.py): relative error < 1e-5 in float32, < 1e-2
in bfloat16; NaN or inf never passes. Inputs are drawn fresh for each case; the reference
is computed from the same (rounded) inputs in float64 by independent code.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zlib

import pytest
import torch

from cosmos_hal import registry
from cosmos_hal.attention import attention, make_call, select_kernel
from conftest import HAS_CUDA, REPO, fake_npu_env
from kernel_reference import attention_f64, rel_err, tol

# name: (batch, q tokens, kv tokens, q heads, kv heads, head dim)
SHAPES = {
    "self_odd": (2, 37, 37, 2, 2, 16),
    "cross_512_text": (2, 45, 512, 2, 2, 32),
    "gqa": (1, 33, 33, 4, 2, 16),
}
CASES = [  # (shape, mask kind)
    ("self_odd", None), ("self_odd", "bool_keys"), ("self_odd", "bool_full"), ("self_odd", "bool_2d"),
    ("self_odd", "additive_bias"), ("self_odd", "additive_keys"),
    ("cross_512_text", None), ("cross_512_text", "bool_keys"), ("cross_512_text", "additive_keys"),
    ("cross_512_text", "additive_bias"),
    ("gqa", None), ("gqa", "bool_full"),
]
CPU_IMPLS = ["sdpa", "math", "npu_fusion"]  # npu_fusion runs under the torch_npu emulator


def make_mask(kind, b, n, sq, sk, gen, device="cpu"):
    """Masks in SDPA meaning, (B, N, Sq, Sk) order; every query keeps at least one key."""
    if kind is None:
        return None
    if kind == "bool_keys":  # text padding: batch 0 keeps its first 2/3 keys
        lengths = torch.tensor([max(1, 2 * sk // 3)] + [sk] * (b - 1))
        return (torch.arange(sk)[None, :] < lengths[:, None])[:, None, None, :].to(device)
    if kind == "bool_full":
        keep = torch.rand(b, n, sq, sk, generator=gen) < 0.7
        keep[..., 0] = True
        return keep.to(device)
    if kind == "bool_2d":
        keep = torch.rand(sq, sk, generator=gen) < 0.5
        keep[:, -1] = True
        return keep.to(device)
    if kind == "additive_bias":  # finite bias: casting it to bool would change the answer
        return torch.randn(1, 1, sq, sk, generator=gen).to(device)
    if kind == "additive_keys":
        keep = make_mask("bool_keys", b, n, sq, sk, gen)
        return torch.zeros(keep.shape).masked_fill(~keep, -math.inf).to(device)
    raise ValueError(kind)


def make_inputs(shape, mask_kind, dtype, layout, seed, device="cpu"):
    b, sq, sk, nq, nkv, d = SHAPES[shape] if isinstance(shape, str) else shape
    gen = torch.Generator().manual_seed(seed)

    def draw(s, n):
        dims = (b, s, n, d) if layout == "BSND" else (b, n, s, d)
        return torch.randn(dims, generator=gen).to(device=device, dtype=dtype).requires_grad_()

    q, k, v = draw(sq, nq), draw(sk, nkv), draw(sk, nkv)
    return q, k, v, make_mask(mask_kind, b, nq, sq, sk, gen, device)


def check_against_f64(impl, shape, mask_kind, dtype, layout, seed=0, device="cpu", scale=None):
    q, k, v, mask = make_inputs(shape, mask_kind, dtype, layout, seed, device)
    out = attention(q, k, v, layout=layout, mask=mask, impl=impl, scale=scale)
    assert out.dtype == dtype and out.shape == q.shape[:-1] + v.shape[-1:]
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device, dtype)
    out.backward(grad_out)

    q64, k64, v64 = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
    ref = attention_f64(q64, k64, v64, layout=layout, mask=None if mask is None else mask.cpu(), scale=scale)
    ref.backward(grad_out.double().cpu())
    errors = {"out": rel_err(out, ref)}
    errors.update({f"d{n}": rel_err(t.grad, t64.grad) for n, t, t64 in
                   (("q", q, q64), ("k", k, k64), ("v", v, v64))})
    assert max(errors.values()) < tol(dtype), errors
    return errors


def _use(impl, request):
    if impl.startswith("npu"):
        request.getfixturevalue("npu_emulator")


@pytest.mark.parametrize("layout", ["BSND", "BNSD"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape,mask_kind", CASES, ids=[f"{s}-{m}" for s, m in CASES])
@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_attention_matches_float64_reference(impl, shape, mask_kind, dtype, layout, request):
    _use(impl, request)
    seed = zlib.crc32(f"{impl}{shape}{mask_kind}{dtype}{layout}".encode())
    check_against_f64(impl, shape, mask_kind, dtype, layout, seed=seed)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_explicit_scale_is_used(impl, request):
    _use(impl, request)
    check_against_f64(impl, "self_odd", "bool_keys", torch.float32, "BSND", seed=11, scale=0.37)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_additive_mask_is_added_not_cast_to_bool(impl, request):
    """diffusers' NPU backend casts float masks to bool, flipping their meaning."""
    _use(impl, request)
    q, k, v, bias = make_inputs("self_odd", "additive_bias", torch.float32, "BSND", seed=3)
    out = attention(q, k, v, mask=bias, impl=impl)
    as_bool = attention(q, k, v, mask=bias.bool(), impl=impl)
    ref = attention_f64(q, k, v, mask=bias)
    assert rel_err(out, ref) < 1e-5
    assert rel_err(as_bool, ref) > 1e-2


def test_npu_fusion_is_chosen_automatically_on_the_emulated_npu(npu_emulator):
    q, k, v, mask = make_inputs("cross_512_text", "bool_keys", torch.float32, "BSND", seed=4)
    calls = npu_emulator.CALLS["npu_fusion_attention"]
    attention(q, k, v, mask=mask)
    assert npu_emulator.CALLS["npu_fusion_attention"] == calls + 1
    assert select_kernel(make_call(q, k, v, mask=mask)).name == "npu_fusion"


# -- the emulator follows Ascend's documented semantics ------------------------------------
def test_emulated_fusion_attention_masks_where_true_and_defaults_to_scale_one(npu_emulator):
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 9, 2, 8, generator=gen) for _ in range(3))
    dropped = torch.rand(1, 1, 9, 9, generator=gen) < 0.3
    dropped[..., 0] = False
    result = npu_emulator.npu_fusion_attention(q, k, v, 2, "BSND", atten_mask=dropped)
    assert isinstance(result, tuple) and len(result) == 7
    ref = attention_f64(q, k, v, mask=~dropped, scale=1.0)
    assert rel_err(result[0], ref) < 1e-5


@pytest.mark.parametrize("mask_shape", [(1, 1, 1, 9), (2, 1, 1, 9), (9,), (1, 9, 9), (2, 2, 9, 1)])
def test_emulated_fusion_attention_rejects_masks_it_would_have_to_broadcast(mask_shape, npu_emulator):
    q = torch.randn(2, 9, 2, 8)
    with pytest.raises(RuntimeError, match="atten_mask shape"):
        npu_emulator.npu_fusion_attention(q, q, q, 2, "BSND", atten_mask=torch.zeros(mask_shape, dtype=torch.bool))


def test_emulated_fusion_attention_rejects_float_atten_mask_and_mismatched_pse(npu_emulator):
    q = torch.randn(1, 5, 2, 8)
    with pytest.raises(RuntimeError, match="atten_mask dtype"):
        npu_emulator.npu_fusion_attention(q, q, q, 2, "BSND", atten_mask=torch.zeros(5, 5))
    with pytest.raises(RuntimeError, match="pse dtype"):
        npu_emulator.npu_fusion_attention(q, q, q, 2, "BSND", pse=torch.zeros(1, 2, 5, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="head_num"):
        npu_emulator.npu_fusion_attention(q, q, q, 4, "BSND")


@pytest.mark.parametrize("mask_kind", ["bool_keys", "bool_full", "bool_2d", "additive_keys", "additive_bias"])
def test_npu_path_hands_the_op_only_shapes_it_accepts(mask_kind, npu_emulator):
    """Every mask form the front end accepts reaches the op as BNSS/B1SS/11SS/SS (atten_mask)
    or BNSS/BN1Skv/1NSS (pse): the emulator raises on anything else."""
    for shape in ("self_odd", "cross_512_text", "gqa"):
        q, k, v, mask = make_inputs(shape, mask_kind, torch.bfloat16, "BNSD", seed=6)
        out = attention(q, k, v, layout="BNSD", mask=mask)
        assert torch.isfinite(out).all()


def test_emulator_stops_claiming_an_accelerator_once_removed(npu_emulator):
    """While imported it is torch's accelerator; once tests drop it from sys.modules, torch
    must stop looking for an NPU (torch.compile and checkpointing would fail otherwise)."""
    assert torch.accelerator.current_accelerator(True).type == "npu"
    saved = {m: sys.modules.pop(m) for m in list(sys.modules) if m == "torch_npu" or m.startswith("torch_npu.")}
    try:
        accelerator = torch.accelerator.current_accelerator(True)
        assert accelerator is None or accelerator.type != "npu"
        compiled = torch.compile(lambda x: x + 1, fullgraph=True, backend="eager")
        assert compiled(torch.ones(2)).tolist() == [2.0, 2.0]
    finally:
        sys.modules.update(saved)
    assert torch.npu.is_available()


# -- front end: validation and choice --------------------------------------------------------
def test_pinned_implementation_is_used(monkeypatch):
    monkeypatch.setenv("COSMOS_HAL_ATTENTION", "math")
    q, k, v, _ = make_inputs("self_odd", None, torch.float32, "BSND", seed=7)
    assert select_kernel(make_call(q, k, v)).name == "math"


def test_auto_choice_on_cpu_is_sdpa():
    q, k, v, _ = make_inputs("self_odd", None, torch.float32, "BSND", seed=7)
    assert select_kernel(make_call(q, k, v)).name == "sdpa"


def test_pinning_an_unavailable_kernel_says_what_is_available(monkeypatch):
    monkeypatch.setenv("COSMOS_HAL_ATTENTION", "npu_fusion")
    q, k, v, _ = make_inputs("self_odd", None, torch.float32, "BSND", seed=7)
    with pytest.raises(registry.KernelUnavailableError, match="npu_fusion.*cannot run here"):
        attention(q, k, v)


def test_pinned_sdpa_sub_backend_math_runs_and_bad_name_is_refused(monkeypatch):
    monkeypatch.setenv("COSMOS_HAL_SDPA_BACKEND", "math")
    check_against_f64("sdpa", "self_odd", "bool_keys", torch.float32, "BSND", seed=8)
    monkeypatch.setenv("COSMOS_HAL_SDPA_BACKEND", "fastest")
    q, k, v, _ = make_inputs("self_odd", None, torch.float32, "BSND", seed=8)
    with pytest.raises(ValueError, match="COSMOS_HAL_SDPA_BACKEND='fastest'"):
        attention(q, k, v, impl="sdpa")


@pytest.mark.parametrize("bad,match", [
    (dict(layout="SBND"), "layout='SBND'"),
    (dict(mask=torch.ones(2, 37, dtype=torch.long)), "dtype torch.int64"),
    (dict(mask=torch.ones(2, 1, 36, 37, dtype=torch.bool)), r"does not broadcast.*dim Sq is 36"),
])
def test_bad_arguments_get_clear_errors(bad, match):
    q, k, v, _ = make_inputs("self_odd", None, torch.float32, "BSND", seed=9)
    with pytest.raises((ValueError, TypeError), match=match):
        attention(q, k, v, **bad)


def test_heads_that_do_not_divide_are_refused():
    q = torch.randn(1, 5, 3, 8)
    k = torch.randn(1, 5, 2, 8)
    with pytest.raises(ValueError, match="k/v heads must divide q heads"):
        attention(q, k, k)


def test_info_reports_npu_fusion_under_the_emulator():
    out = subprocess.run([sys.executable, "-m", "cosmos_hal", "info", "--json"], env=fake_npu_env(),
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    kernels = json.loads(out)["kernels"]
    assert kernels["attention"]["chosen"] == "npu_fusion"
    assert kernels["rms_norm"]["chosen"] == "npu_rms_norm"
    assert kernels["rope"]["chosen"] == "npu_rotary_mul"
    assert kernels["adamw"]["chosen"] == "npu_fused_adamw"


# -- CUDA (run by the lead on an H100: bash tools/test.sh -m cuda) ---------------------------
CUDA_SDPA = [  # (sub-backend, mask kinds it takes)
    ("cudnn", [None, "bool_keys", "additive_keys"]),
    ("flash", [None]),
    ("efficient", [None, "bool_keys", "bool_full", "additive_bias", "additive_keys"]),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("sub,mask_kind", [(s, m) for s, ms in CUDA_SDPA for m in ms],
                         ids=[f"{s}-{m}" for s, ms in CUDA_SDPA for m in ms])
@pytest.mark.parametrize("shape", ["self_odd", "cross_512_text", (1, 1031, 1031, 4, 4, 128)],
                         ids=["self_odd", "cross_512_text", "self_1031x128"])
def test_cuda_sdpa_sub_backend_matches_float64(sub, mask_kind, dtype, shape, monkeypatch):
    if dtype == torch.float32 and sub in ("cudnn", "flash"):
        pytest.skip(f"SDPA {sub} kernels take half precision only")
    monkeypatch.setenv("COSMOS_HAL_SDPA_BACKEND", sub)
    try:
        check_against_f64("sdpa", shape, mask_kind, dtype, "BSND", seed=21, device="cuda")
    except RuntimeError as exc:
        if "No available kernel" in str(exc) and mask_kind is not None:
            pytest.skip(f"torch's {sub} SDPA does not take this mask here: {str(exc)[:200]}")
        raise


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", ["self_odd", "cross_512_text", "gqa", (1, 1031, 1031, 4, 4, 128)],
                         ids=["self_odd", "cross_512_text", "gqa", "self_1031x128"])
def test_cuda_flash_attn_matches_float64(shape, dtype):
    if not registry.get("attention", "flash_attn").usable:
        pytest.skip("flash_attn is not installed")
    check_against_f64("flash_attn", shape, None, dtype, "BSND", seed=22, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("mask_kind", [None, "bool_keys", "additive_keys"])
def test_cuda_auto_choice_matches_float64_in_bf16(mask_kind):
    check_against_f64(None, "cross_512_text", mask_kind, torch.bfloat16, "BNSD", seed=23, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("mask_kind", [None, "bool_keys", "additive_keys"])
def test_cuda_attention_path_never_synchronises_the_host(mask_kind):
    q, k, v, mask = make_inputs("cross_512_text", mask_kind, torch.bfloat16, "BSND", seed=24, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = attention(q, k, v, mask=mask)
        out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out).all()


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only machine's defaults")
def test_cpu_machine_never_picks_a_gpu_kernel():
    q, k, v, _ = make_inputs("self_odd", None, torch.bfloat16, "BSND", seed=25)
    assert select_kernel(make_call(q, k, v)).name in ("sdpa", "math")


def test_cosmos_hal_attention_is_callable_as_documented():
    """`cosmos_hal.attention(q, k, v)` works although the submodule of that name is loaded."""
    import cosmos_hal
    import cosmos_hal.attention  # noqa: F401  (replaces the package attribute with the module)

    q, k, v, mask = make_inputs("self_odd", "bool_keys", torch.float32, "BSND", seed=26)
    assert rel_err(cosmos_hal.attention(q, k, v, mask=mask), attention_f64(q, k, v, mask=mask)) < 1e-5


# -- tools/bench_kernels.py ------------------------------------------------------------------
def test_bench_kernels_tiny_mode_measures_every_cpu_kernel(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "COSMOS_HAL_BACKEND": "cpu"}
    proc = subprocess.run([sys.executable, "tools/bench_kernels.py", "--tiny", "--repeats", "1", "--warmup", "0",
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO, env=env, check=True)
    assert "| implementation |" in proc.stdout
    report = json.loads(out.read_text())
    assert report["ceiling"]["tflops"] > 0
    measured = {(r["impl"], r["shape"]) for r in report["rows"] if r.get("tflops", 0) > 0}
    assert measured == {(i, s) for i in ("sdpa", "math") for s in ("self_tiny", "cross_tiny")}


def test_bench_kernels_without_an_accelerator_says_so_and_fails():
    env = {**os.environ, "COSMOS_HAL_BACKEND": "cpu"}
    proc = subprocess.run([sys.executable, "tools/bench_kernels.py"], capture_output=True, text=True, cwd=REPO,
                          env=env)
    assert proc.returncode != 0
    assert "no GPU or NPU here" in proc.stderr and "--tiny" in proc.stderr
