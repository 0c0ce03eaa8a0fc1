"""Issue #17 point 6, second half: the Predict1 loss on the GPU in fp32 equals the CPU's, with
the real (tiny) Predict1 DiT and the same draws (run with -m cuda on a GPU host)."""

from __future__ import annotations

import copy

import pytest
import torch

from cosmos_hal.train import loss as L
from cosmos_hal.train.experiments import LossConfig

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("preset, video", [("tiny-predict1-text2world", False), ("tiny-predict1-video2world", True)])
def test_predict1_loss_in_fp32_on_the_gpu_equals_the_cpu(preset, video):
    from cosmos_hal.models.dit import build_transformer

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = LossConfig(recipe="predict1", loss_scale=1.0, min_cond_frames=0, max_cond_frames=2, text_dropout=0.3,
                     adjust_video_noise=video)
    cpu = build_transformer(preset, dtype=torch.float32, device="cpu", init_seed=1)
    L.attach_logvar(cpu, seed=1)
    gpu = copy.deepcopy(cpu).to("cuda")
    shape = (2, 16, 3, 4, 4)
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.5
    text = torch.randn(2, 8, cpu.config.text_embed_dim, generator=torch.Generator().manual_seed(1))
    d = L.draw(cfg, shape, seed=3, step=7, rank=0, is_video=video)

    def loss_on(model, device):
        pad = torch.zeros(1, 1, shape[-2], shape[-1], device=device)
        ctx = text.to(device)

        def net(x_in, timestep, cond_mask, keep):
            return model(hidden_states=x_in, timestep=timestep, encoder_hidden_states=ctx * keep.view(-1, 1, 1),
                         condition_mask=cond_mask, padding_mask=pad, fps=24, return_dict=False)[0]

        value, _ = L.predict1_loss(net, x0.to(device), d, cfg, is_video=video, logvar=model.logvar)
        return value

    with torch.no_grad():
        ref, got = loss_on(cpu, "cpu"), loss_on(gpu, "cuda")
    assert torch.isfinite(got) and float((got.cpu() - ref).abs() / ref.abs()) < 1e-5, (float(got), float(ref))
