"""Backend selection: auto-detection order, overrides, and errors that say what was found."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

import cosmos_hal.backend as backend_mod
from cosmos_hal.backend import BackendUnavailableError, select
from conftest import HAS_CUDA


def test_auto_detection_picks_cpu_without_accelerators():
    if HAS_CUDA:
        pytest.skip("this machine has a GPU")
    chosen, why = select()
    assert chosen.name == "cpu"
    assert "auto-detected" in why and "npu: torch_npu is not installed" in why


def test_env_var_pins_backend(monkeypatch):
    monkeypatch.setenv("COSMOS_HAL_BACKEND", "cpu")
    chosen, why = select()
    assert chosen.name == "cpu" and "COSMOS_HAL_BACKEND=cpu" in why


def test_flag_beats_env_var(monkeypatch, npu_emulator):
    monkeypatch.setenv("COSMOS_HAL_BACKEND", "npu")
    chosen, why = select("cpu")
    assert chosen.name == "cpu" and "--backend" in why


def test_missing_backend_error_says_what_was_found(monkeypatch):
    monkeypatch.setenv("COSMOS_HAL_BACKEND", "npu")
    with pytest.raises(BackendUnavailableError) as err:
        select()
    msg = str(err.value)
    assert "torch_npu is not installed" in msg
    assert "Found instead" in msg and "cpu: available" in msg
    assert "COSMOS_HAL_BACKEND" in msg


def test_unknown_backend_name_lists_choices():
    with pytest.raises(BackendUnavailableError, match="cpu, cuda|npu, cuda, cpu"):
        select("tpu")


def test_emulated_npu_is_detected_first(npu_emulator):
    chosen, why = select()
    assert chosen.name == "npu"
    assert chosen.dist_backend == "hccl"
    assert chosen.device(3) == torch.device("npu", 3)


def test_npu_wins_over_cuda_lookalike_and_cuda_is_not_fooled(npu_emulator):
    """transfer_to_npu makes torch.cuda.is_available() say True; neither probe may trust it."""
    from torch_npu.contrib import transfer_to_npu

    try:
        assert torch.cuda.is_available()  # the lie we must not believe
        cuda = backend_mod.get_backend("cuda").probe()
        assert not cuda.available
        assert select()[0].name == "npu"
    finally:
        transfer_to_npu.undo()
        del sys.modules["torch_npu.contrib.transfer_to_npu"]


def test_npu_backend_binds_device_and_seeds_each_device(npu_emulator):
    be = backend_mod.get_backend("npu")
    be.set_device(5)
    assert npu_emulator.npu.current_device() == 5
    be.manual_seed(123)
    a = torch.randn(4, generator=npu_emulator.npu.default_generator_for(0))
    be.manual_seed(123)
    b = torch.randn(4, generator=npu_emulator.npu.default_generator_for(7))
    assert torch.equal(a, b)


def test_npu_rng_state_round_trips(npu_emulator):
    be = backend_mod.get_backend("npu")
    be.manual_seed(7)
    state = be.rng_state()
    first = torch.randn(8, generator=npu_emulator.npu.default_generator_for(2))
    be.set_rng_state(state)
    again = torch.randn(8, generator=npu_emulator.npu.default_generator_for(2))
    assert torch.equal(first, again)


def test_npu_deterministic_mode_turns_off_hf32(npu_emulator):
    be = backend_mod.get_backend("npu")
    try:
        be.set_deterministic(True)
        assert torch.npu.matmul.allow_hf32 is False and torch.npu.conv.allow_hf32 is False
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        be.set_deterministic(False)


def test_launch_env_per_backend():
    from types import SimpleNamespace

    args = SimpleNamespace(nproc_per_node=8, nnodes=2, hccl_if_ip="10.0.0.7", parity=True)
    npu = backend_mod.get_backend("npu").launch_env(args)
    assert npu["HCCL_IF_IP"] == "10.0.0.7" and int(npu["HCCL_CONNECT_TIMEOUT"]) >= 120
    assert npu["HCCL_DETERMINISTIC"] == "true" and npu["CLOSE_MATMUL_K_SHIFT"] == "1"
    assert npu["TASK_QUEUE_ENABLE"] == "1" and "expandable_segments" in npu["PYTORCH_NPU_ALLOC_CONF"]
    cuda = backend_mod.get_backend("cuda").launch_env(args)
    assert cuda["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    single = backend_mod.get_backend("npu").launch_env(SimpleNamespace(nnodes=1, parity=False))
    assert "HCCL_CONNECT_TIMEOUT" not in single and "HCCL_DETERMINISTIC" not in single


@pytest.mark.cuda
def test_cuda_backend_on_a_gpu():
    chosen, _ = select()
    assert chosen.name == "cuda" and chosen.dist_backend == "nccl"
    assert chosen.device_count() >= 1 and chosen.device_names()[0]
    assert "cuda" in chosen.versions()


def test_npu_memory_stats_report_the_device_total_for_ac_plans(npu_emulator, monkeypatch):
    from cosmos_hal.train import ac

    stats = backend_mod.current().memory_stats()
    assert backend_mod.current().name == "npu"
    assert set(stats) >= {"allocated_gb", "peak_allocated_gb", "reserved_gb", "total_gb"}
    # the emulator has no device memory: the planner sees 0 and makes every block selective
    assert stats["total_gb"] == 0 and ac.device_total_bytes() == 0
    monkeypatch.setattr(torch.npu, "mem_get_info", lambda device=None: (10 * 2**30, 64 * 2**30))  # a 64 GB card
    assert ac.device_total_bytes() == 64 * 2**30


# -- the contract: what the core asks instead of comparing names (#16 point 2) -------------------
CONTRACT = {"probe", "is_accelerator", "supports_bf16", "memory_stats", "empty_cache", "launch_env"}


def test_every_backend_answers_the_abstract_contract():
    assert CONTRACT <= backend_mod.Backend.__abstractmethods__
    for name in backend_mod.BACKEND_MODULES:
        be = backend_mod.get_backend(name)  # would raise TypeError if one answer were missing
        assert be.name == name and be.device_type and be.dist_backend

    class Forgetful(backend_mod.Backend):
        name, device_type, dist_backend = "x", "cpu", "gloo"

        def probe(self):
            return backend_mod.Probe(True, "test")

    with pytest.raises(TypeError, match="empty_cache"):
        Forgetful()


def test_a_backend_without_its_names_is_refused():
    cpu_cls = type(backend_mod.get_backend("cpu"))
    nameless = type("Nameless", (cpu_cls,), {"dist_backend": ""})
    with pytest.raises(TypeError, match="dist_backend"):
        nameless()


def test_cpu_answers_host_float32_and_no_device_memory():
    from cosmos_hal.infer.loader import resolve_dtype

    cpu = backend_mod.get_backend("cpu")
    assert not cpu.is_accelerator() and cpu.supports_bf16()
    assert cpu.default_dtype() == torch.float32 and resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert "free_gb" not in cpu.memory_stats() and cpu.sdpa_variants() == ()
    cpu.empty_cache()  # a no-op, but it must exist


def test_npu_answers_through_torch_npu(npu_emulator, monkeypatch):
    from cosmos_hal.infer.loader import InferenceInputError, resolve_dtype
    from cosmos_hal.patching import runtime

    npu = backend_mod.current()
    assert npu.name == "npu" and npu.is_accelerator()
    assert npu.default_dtype() == torch.bfloat16 and resolve_dtype(None, npu) == torch.bfloat16
    emptied = []
    monkeypatch.setattr(torch.npu, "empty_cache", lambda: emptied.append(1))
    runtime.empty_cache()  # upstream's torch.cuda.empty_cache(), patched
    assert emptied == [1]
    # an Ascend without bf16 (torch.npu.is_bf16_supported() False): float32 by default, bf16 refused
    monkeypatch.setattr(torch.npu, "is_bf16_supported", lambda: False)
    assert resolve_dtype(None, npu) == torch.float32
    with pytest.raises(InferenceInputError, match="--dtype fp16 or --dtype fp32"):
        resolve_dtype("bf16", npu)
    from cosmos_hal.train.experiments import ExperimentError, get
    from cosmos_hal.train.trainer import check_precision

    exp = get("tiny_video2world_synthetic")
    with pytest.raises(ExperimentError, match="precision=fp32"):
        check_precision(dataclasses.replace(exp, precision="bf16"), npu)
    check_precision(dataclasses.replace(exp, precision="fp32"), npu)
