"""Training: experiments registry, losses, EMA, trainer loop, checkpoints, LoRA/DoRA, parallelism."""
