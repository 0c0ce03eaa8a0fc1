"""Run under torchrun (gloo, CPU) by tests/test_sharded_build.py: for each configuration, builds
the trainer's DiT the FSDP2 way (build_model on meta, parallelize, sharded_init.materialize) and
the unsharded way (build_model on the device, what every rank did before), recording
torch.profiler's peak host allocation during each (the host is the device here), and compares
the sharded weights, gathered, with the unsharded build bit for bit. Writes <out>/rank<r>.json.

Usage: torchrun --nproc_per_node=2 tests/sharded_build_worker.py OUT CONFIGS_JSON
(CONFIGS_JSON: {"name": [experiment, [key=value, ...]], ...})
"""

from __future__ import annotations

import json
import os
import sys

import torch

from checkpoint_fsdp_worker import host_peak_during
from cosmos_hal import dist
from cosmos_hal.backend import current
from cosmos_hal.train import checkpoint as ckpt
from cosmos_hal.train import experiments, sharded_init
from cosmos_hal.train.parallelize import parallelize
from cosmos_hal.train.trainer import build_model


def mapped_sizes(exp) -> tuple[int, ...]:
    """model_path's safetensors files: memory-mapped (page cache), not allocated."""
    if not exp.model_path:
        return ()
    from cosmos_hal.models.loading import diffusers_weight_files

    return tuple(os.path.getsize(f) for f in diffusers_weight_files(exp.model_path))


def run(name: str, exp, world) -> dict:
    exp, _ = experiments.resolve_fast_path(exp, current().proven_fast_path())
    built = {}

    def sharded():
        model, _ = build_model(exp, world.device, meta=True)
        built["meta"] = all(p.is_meta for p in model.parameters())
        _, owner = parallelize(model, exp, world)
        built["local"] = sharded_init.materialize(owner, exp, world.device, offload=exp.memory == "offload_params")
        built["sharded"] = owner

    def unsharded():
        built["full"], _ = build_model(exp, world.device)

    peak_sharded, _ = host_peak_during(sharded, mapped_sizes(exp))
    peak_unsharded, _ = host_peak_during(unsharded, mapped_sizes(exp))
    ref = built["full"].state_dict()
    got = ckpt.model_state(built["sharded"], trainable_only=False)  # gathered on rank 0
    differ = None
    if world.is_main:
        differ = sorted(set(ref) ^ set(got)) + sorted(k for k in ref if k in got and not torch.equal(
            ref[k].cpu(), got[k].cpu()))
    return {"name": name, "built_on_meta": built["meta"], "local_param_bytes": built["local"],
            "full_param_bytes": sum(p.nbytes for p in built["full"].parameters()),
            "largest_param_bytes": max(p.nbytes for p in built["full"].parameters()),
            "peak_sharded": peak_sharded, "peak_unsharded": peak_unsharded, "differ": differ}


def main():
    out, configs = sys.argv[1], json.loads(sys.argv[2])
    world = dist.init()
    results = [run(name, experiments.get(exp_name, overrides), world)
               for name, (exp_name, overrides) in configs.items()]
    with open(os.path.join(out, f"rank{world.rank}.json"), "w") as f:
        json.dump(results, f, indent=1)
    dist.shutdown()


if __name__ == "__main__":
    main()
