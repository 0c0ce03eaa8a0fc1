"""Backends: one module per kind of hardware. The only place vendor packages are imported,
always inside functions so that importing this package never needs them."""
