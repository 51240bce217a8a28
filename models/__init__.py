"""Torch-only model code (U-Nets, losses, registry format). No Prefect, no fsspec."""
