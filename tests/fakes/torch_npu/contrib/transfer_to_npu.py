"""Emulated ``torch_npu.contrib.transfer_to_npu``: like the real one, it makes ``torch.cuda``
answer for the NPU (is_available/device_count), which is why no one may detect the NPU, or
rule it out, through ``torch.cuda``. Importing it patches torch for the rest of the process
until ``undo()`` is called (tests call it)."""

import torch

import torch_npu

_saved = (torch.cuda.is_available, torch.cuda.device_count)
torch.cuda.is_available = torch_npu.npu.is_available
torch.cuda.device_count = torch_npu.npu.device_count


def undo() -> None:
    torch.cuda.is_available, torch.cuda.device_count = _saved
