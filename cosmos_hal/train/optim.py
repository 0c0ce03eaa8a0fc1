"""The training optimizer: the backend's fused AdamW, or AdamW with compact or host-held moments.

Why our own: seed 002 (SimpleTuner on 24 GB cards) trains with ``adamw_bf16`` and
``adamw_8bit``, and the 14B recipe's two fp32 moments are 8 of its 20 bytes per parameter.
:class:`CompactAdamW` is torch's AdamW step (torch/optim/adamw.py, ``_single_tensor_adamw``:
decay ``p *= 1 - lr*wd``, ``m.lerp_(g, 1-b1)``, ``v = b2*v + (1-b2)*g^2``, bias corrections)
computed in fp32, with the moments *stored* as:

* ``float32``  as torch (with ``state_device`` host, this is ``memory=offload_optimizer``);
* ``bfloat16`` rounded to nearest (no stochastic rounding); the weights stay fp32 (the trainer's
  master weights), so only the moments lose precision: half the bytes;
* ``int8``     bitsandbytes' blockwise 8-bit state: blocks of 256 elements, each scaled by its
  absmax and coded with the dynamic (signed for m, unsigned for v) map, nearest code
  (bitsandbytes 0.50.2 optim/optimizer.py lines 158-159, 502-526, functional.py
  ``create_dynamic_map``); tensors under 4096 elements keep fp32 moments as there: ~a quarter.

It only uses torch ops on each parameter's local tensor, so it runs on every backend and on
FSDP2 shards (DTensor: each rank steps its own shard). ``state_dict()`` gives torch AdamW's own
format (fp32 ``exp_avg``/``exp_avg_sq`` shaped like the parameter, DTensor where it is one), so
checkpoints load into either optimizer and FSDP2's gather/scatter works unchanged.
"""

from __future__ import annotations

import math

import torch

NAMES = ("adamw", "adamw_bf16", "adamw_8bit")
STATE_DTYPES = {"adamw": torch.float32, "adamw_bf16": torch.bfloat16, "adamw_8bit": torch.int8}
BLOCK = 256  # bitsandbytes' blockwise optimizer block
MIN_8BIT_SIZE = 4096  # bitsandbytes' min_8bit_size: smaller tensors keep fp32 moments


def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """bitsandbytes' dynamic quantization map (functional.py ``create_dynamic_map``): 256 sorted
    values in [-1, 1] (signed) or [0, 1], dense near 0 where most moments are."""
    data = []
    non_sign_bits = total_bits - 1
    additional = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                    else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        bounds = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional > 0:
        bounds = torch.linspace(0.1, 1, additional + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (2**total_bits - len(data))
    return torch.tensor(sorted(data), dtype=torch.float32)


_MAPS: dict = {}


def _code(signed: bool, device) -> torch.Tensor:
    key = (signed, str(device))
    if key not in _MAPS:
        _MAPS[key] = dynamic_map(signed).to(device)
    return _MAPS[key]


def quantize_blockwise(x: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 codes, fp32 absmax per block of ``BLOCK``) of ``x``: nearest map entry of x/absmax."""
    flat = x.reshape(-1).float()
    n = flat.numel()
    blocks = torch.nn.functional.pad(flat, (0, (-n) % BLOCK)).view(-1, BLOCK)
    absmax = blocks.abs().amax(dim=1)
    normed = blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    code = _code(signed, x.device)
    idx = torch.searchsorted((code[1:] + code[:-1]) / 2, normed.contiguous())
    return idx.to(torch.uint8).view(-1)[:n].clone(), absmax


def dequantize_blockwise(q: torch.Tensor, absmax: torch.Tensor, signed: bool, shape) -> torch.Tensor:
    n = q.numel()
    values = _code(signed, q.device)[q.long()]
    values = torch.nn.functional.pad(values, (0, (-n) % BLOCK)).view(-1, BLOCK) * absmax[:, None]
    return values.view(-1)[:n].view(shape)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


class _Moment:
    """One moment stored as ``dtype`` on ``device``; ``get()`` is fp32, ``put()`` stores it back."""

    def __init__(self, like: torch.Tensor, dtype: torch.dtype, device, signed: bool):
        self.shape, self.signed = like.shape, signed
        self.dtype = torch.float32 if dtype == torch.int8 and like.numel() < MIN_8BIT_SIZE else dtype
        zeros = torch.zeros(like.shape, dtype=torch.float32, device=device)
        self.put(zeros)

    def put(self, x: torch.Tensor) -> None:
        if self.dtype == torch.int8:
            self.q, self.absmax = quantize_blockwise(x, self.signed)
        else:
            self.data = x.to(self.dtype)

    def get(self) -> torch.Tensor:
        if self.dtype == torch.int8:
            return dequantize_blockwise(self.q, self.absmax, self.signed, self.shape)
        return self.data.float()

    def nbytes(self) -> int:
        if self.dtype == torch.int8:
            return self.q.numel() * self.q.element_size() + self.absmax.numel() * 4
        return self.data.numel() * self.data.element_size()


class CompactAdamW(torch.optim.Optimizer):
    """AdamW whose two moments are stored as ``state_dtype`` (float32, bfloat16 or int8) on
    ``state_device`` (None: beside each parameter; "cpu": host memory, stepped there).
    Hyper-parameters and update as torch.optim.AdamW; see the module docstring."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
                 *, state_dtype: torch.dtype = torch.float32, state_device=None):
        if state_dtype not in (torch.float32, torch.bfloat16, torch.int8):
            raise ValueError(f"CompactAdamW: state_dtype {state_dtype}; use torch.float32, torch.bfloat16 or torch.int8")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.state_dtype = state_dtype
        self.state_device = None if state_device is None else torch.device(state_device)

    def _where(self, local: torch.Tensor):
        return self.state_device or local.device

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            lr = float(lr)
            for p in group["params"]:
                if p.grad is None:
                    continue
                local = _local(p)
                where = self._where(local)
                grad = _local(p.grad).to(device=where, dtype=torch.float32)
                st = self.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["m"] = _Moment(local, self.state_dtype, where, signed=True)
                    st["v"] = _Moment(local, self.state_dtype, where, signed=False)
                st["step"] += 1
                t = float(st["step"])
                m, v = st["m"].get(), st["v"].get()
                m.lerp_(grad, 1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                st["m"].put(m)
                st["v"].put(v)
                denom = (v.sqrt() / math.sqrt(1 - b2**t)).add_(eps)
                update = (m / denom).mul_(lr / (1 - b1**t))
                local.mul_(1 - lr * wd)
                local.sub_(update.to(device=local.device, dtype=local.dtype))
        return loss

    def state_bytes(self) -> int:
        """Bytes the moments take (the quantity that ``state_dtype`` shrinks)."""
        return sum(st[k].nbytes() for st in self.state.values() for k in ("m", "v") if k in st)

    # -- torch AdamW's checkpoint format ---------------------------------------------------------

    def _ordered(self) -> list:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        sd = super().state_dict()
        for i, p in enumerate(self._ordered()):
            st = self.state.get(p)
            if st and "m" in st:
                sd["state"][i] = {"step": st["step"].clone(), "exp_avg": _like(p, st["m"].get()),
                                  "exp_avg_sq": _like(p, st["v"].get())}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        saved = dict(state_dict.get("state", {}))
        # as torch's Optimizer.load_state_dict: the saved groups' ids (ints, or FQNs from FSDP2's
        # set_optimizer_state_dict) name the parameters in order
        keys = [k for g in state_dict["param_groups"] for k in g["params"]]
        super().load_state_dict({"state": {}, "param_groups": state_dict["param_groups"]})
        for key, p in zip(keys, self._ordered()):
            entry = saved.get(key)
            if not entry:
                continue
            local = _local(p)
            where = self._where(local)
            st = self.state[p]
            st["step"] = torch.as_tensor(entry["step"], dtype=torch.float32).clone().cpu()
            for key, name, signed in (("m", "exp_avg", True), ("v", "exp_avg_sq", False)):
                moment = _Moment(local, self.state_dtype, where, signed=signed)
                moment.put(_local(entry[name]).to(device=where, dtype=torch.float32).view(local.shape))
                st[key] = moment


def _like(p: torch.Tensor, local_value: torch.Tensor) -> torch.Tensor:
    """``local_value`` (this rank's part) as a tensor like ``p``: a DTensor with p's placement."""
    if hasattr(p, "to_local"):
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(local_value.to(_local(p).device), p.device_mesh, p.placements,
                                  shape=p.shape, stride=p.stride())
    return local_value.to(p.device)


def build_optimizer(params, optim_cfg, *, offload: bool = False) -> torch.optim.Optimizer:
    """The experiment's optimizer: ``optim.name=adamw`` is the backend's fused AdamW
    (cosmos_hal.ops, chosen per call); adamw_bf16 / adamw_8bit, and any optimizer whose state
    lives in host memory (``offload``: memory=offload_optimizer), are :class:`CompactAdamW`."""
    from cosmos_hal import ops

    params = list(params)
    kw = dict(lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay)
    if optim_cfg.name not in NAMES:
        raise ValueError(f"optim.name={optim_cfg.name!r}: choose one of {', '.join(NAMES)}")
    if optim_cfg.name == "adamw" and not offload:
        return ops.fused_adamw(params, **kw)
    return CompactAdamW(params, **kw, state_dtype=STATE_DTYPES[optim_cfg.name], state_device="cpu" if offload else None)


def state_bytes_per_param(name: str) -> float:
    """Bytes of optimizer state per trainable parameter (planning figure; 8-bit includes the
    fp32 absmax per 256-element block)."""
    return {"adamw": 8.0, "adamw_bf16": 4.0, "adamw_8bit": 2.0 + 2 * 4.0 / BLOCK}[name]


def init_optimizer_state(optimizer) -> None:
    """Create the optimizer's state with one zero-gradient, zero-lr step before loading into it.

    ``torch.distributed.checkpoint`` does the same itself but ends with
    ``zero_grad(set_to_none=True)``, which fused vendor optimizers (torch_npu's
    ``NpuFusedAdamW``) refuse with a ValueError: their gradients live in one combined buffer,
    which zeroing keeps. Others free their gradients, so the first step's peak is unchanged."""
    if optimizer.state:
        return
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    if any(p.grad is not None for p in params):
        return
    for p in params:
        p.grad = torch.zeros_like(p)
    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = torch.tensor(0.0) if isinstance(g["lr"], torch.Tensor) else 0.0
    optimizer.step()
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
    try:
        optimizer.zero_grad(set_to_none=True)
    except ValueError:
        optimizer.zero_grad()
