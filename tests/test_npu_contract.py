"""Every torch_npu call in backends/npu.py binds to the real signature in the PyPI wheel.

Calls are found with ``ast`` as ``torch_npu.<name>(...)`` (the backend always calls through
a local named ``torch_npu``); signatures come from the wheel without importing it.
"""

from __future__ import annotations

import inspect
import os

import pytest

import npu_schema
from conftest import REPO

NPU_BACKEND = os.path.join(REPO, "backends", "npu.py")
# torch_npu attributes that are Python classes/functions rather than documented ops.
PYTHON_APIS = {
    "optim.NpuFusedAdamW": ("torch_npu/optim/npu_fused_adamw.py", "NpuFusedAdamW"),
}


@pytest.mark.network
def test_op_docs_parse_into_signatures():
    sigs = npu_schema.op_signatures()
    assert len(sigs) > 100  # about 150 of the ~217 docs carry a parsable signature line
    fa = sigs["npu_fusion_attention"]
    assert list(fa.parameters)[:5] == ["query", "key", "value", "head_num", "input_layout"]
    assert fa.parameters["scale"].default == "1."
    assert list(sigs["npu_rms_norm"].parameters) == ["self", "gamma", "epsilon"]
    assert list(sigs["npu_rotary_mul"].parameters)[:4] == ["input", "r1", "r2", "rotary_mode"]


@pytest.mark.network
def test_every_backend_call_binds_to_the_real_signature():
    calls = npu_schema.calls_in_source(NPU_BACKEND)
    ops = npu_schema.op_signatures()
    problems = []
    for name, line, n_pos, kws, star in calls:
        if name in PYTHON_APIS:
            sig = npu_schema.python_signature(*PYTHON_APIS[name])
        elif name in ops:
            sig = ops[name]
        else:
            problems.append(f"line {line}: torch_npu.{name} is not in the torch-npu "
                            f"{npu_schema.TORCH_NPU_VERSION} wheel")
            continue
        if star:
            problems.append(f"line {line}: torch_npu.{name} called with *args/**kwargs; cannot check")
            continue
        try:
            sig.bind(*range(n_pos), **{k: None for k in kws})
        except TypeError as exc:
            problems.append(f"line {line}: torch_npu.{name}{sig}: {exc}")
    assert not problems, "\n".join(problems)


@pytest.mark.network
def test_fused_adamw_signature_is_known():
    sig = npu_schema.python_signature(*PYTHON_APIS["optim.NpuFusedAdamW"])
    assert list(sig.parameters) == ["params", "lr", "betas", "eps", "weight_decay", "amsgrad"]
