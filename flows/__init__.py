"""Prefect flows, one module per stage, and the `pixelmill` CLI."""
