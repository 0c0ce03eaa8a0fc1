"""Every ``torch.npu`` function the emulator (tests/fakes/torch_npu) provides exists in the real
torch-npu wheel with the same parameter names and defaults present, read from the wheel's
``torch_npu/npu/*.py`` without importing it; the top-level ops and NpuFusedAdamW likewise.
So code that runs under the emulator calls the real package's API, not one we invented."""

from __future__ import annotations

import ast
import inspect
import zipfile

import pytest

import npu_schema

EMULATOR_ONLY = {"default_generator_for"}  # lets tests draw from a device's stream; not torch_npu's
OPS = ("npu_fusion_attention", "npu_rms_norm", "npu_rotary_mul")


def _wheel_npu_functions() -> dict[str, inspect.Signature]:
    defs = {}
    with zipfile.ZipFile(npu_schema.wheel_path()) as z:
        for member in sorted(z.namelist()):
            if member.startswith("torch_npu/npu/") and member.endswith(".py") and member.count("/") == 2:
                for node in ast.parse(z.read(member).decode()).body:
                    if isinstance(node, ast.FunctionDef) and node.name not in defs:
                        defs[node.name] = npu_schema._signature_from_ast(node, drop_self=False)
    return defs


def _shape(sig: inspect.Signature) -> list[tuple[str, bool]]:
    return [(p.name, p.default is not inspect.Parameter.empty) for p in sig.parameters.values()]


@pytest.fixture()
def emulator(npu_emulator):
    return npu_emulator


@pytest.mark.network
def test_every_emulated_torch_npu_npu_function_matches_the_wheel(emulator):
    real = _wheel_npu_functions()
    problems, checked = [], 0
    for name, fn in sorted(vars(emulator.npu).items()):
        if name.startswith("__") or name in EMULATOR_ONLY:
            continue
        if not callable(fn):
            src = npu_schema.read_wheel_file("torch_npu/npu/__init__.py")
            if f"\n{name} = " not in src:
                problems.append(f"torch_npu.npu.{name}: not an attribute of the wheel's torch_npu.npu")
            continue
        checked += 1
        if name not in real:
            problems.append(f"torch_npu.npu.{name}: no such function in the wheel's torch_npu/npu/")
        elif _shape(inspect.signature(fn)) != _shape(real[name]):
            problems.append(f"torch_npu.npu.{name}{inspect.signature(fn)} != wheel's {name}{real[name]}")
    assert checked >= 15
    assert not problems, "\n".join(problems)


@pytest.mark.network
def test_emulated_ops_and_optimizer_match_the_wheel(emulator):
    ops = npu_schema.op_signatures()
    problems = []
    for name in OPS:
        if _shape(inspect.signature(getattr(emulator._ops, name))) != _shape(ops[name]):
            problems.append(f"torch_npu.{name}{inspect.signature(getattr(emulator._ops, name))} != {ops[name]}")
    real_opt = npu_schema.python_signature("torch_npu/optim/npu_fused_adamw.py", "NpuFusedAdamW")
    if _shape(inspect.signature(emulator.optim.NpuFusedAdamW.__init__))[1:] != _shape(real_opt):
        problems.append(f"NpuFusedAdamW{inspect.signature(emulator.optim.NpuFusedAdamW.__init__)} != {real_opt}")
    assert not problems, "\n".join(problems)
