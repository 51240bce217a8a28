"""Run a registered model on images (one file now; tiled bulk application builds on this)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from pixelmill.tasks.training.datasets import to_tensor
from pixelmill.tasks.training.evaluate import to_uint8


@torch.inference_mode()
def enhance_image(model: torch.nn.Module, config: dict, img: Image.Image, device: torch.device) -> Image.Image:
    """An 8-bit RGB image through the model; the output is `scale` times larger for SR models."""
    img = img.convert("L" if config.get("in_channels", 3) == 1 else "RGB")
    x = to_tensor(np.asarray(img).reshape(img.height, img.width, -1)).unsqueeze(0).to(device)
    return Image.fromarray(to_uint8(model.to(device).eval()(x)[0]))


def encode_like(img: Image.Image, name: str) -> bytes:
    """Encode by the output file's extension (PNG unless it asks for JPEG or WebP)."""
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}.get(name.rsplit(".", 1)[-1].lower(), "PNG")
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 95} if fmt != "PNG" else {}))
    return buf.getvalue()
