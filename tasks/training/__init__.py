"""Training and evaluation: configs (torch-free), the one loop, objectives per model task, metrics, data sets."""
