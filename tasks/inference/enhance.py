"""Run a registered model on images (one file now; tiled bulk application builds on this)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from pixelmill.models.device import to_tensor, to_uint8
from pixelmill.tasks.core.images import ALPHA_FORMATS, output_format


@torch.inference_mode()
def enhance_image(model: torch.nn.Module, config: dict, img: Image.Image, device: torch.device) -> Image.Image:
    """An 8-bit RGB image through the model; the output is `scale` times larger for SR models."""
    img = img.convert("L" if config.get("in_channels", 3) == 1 else "RGB")
    x = to_tensor(np.asarray(img).reshape(img.height, img.width, -1)).unsqueeze(0).to(device)
    return Image.fromarray(to_uint8(model.to(device).eval()(x)[0]))


def alpha_of(im: Image.Image) -> Image.Image | None:
    """The image's transparency as an L image (palette transparency included), or None when it has none."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        return im.convert("RGBA").getchannel("A")
    return None


def with_alpha(out: Image.Image, alpha: Image.Image | None, fmt: str) -> tuple[Image.Image, str]:
    """The model works on RGB; the input's alpha, resized to the output, goes back on for formats that keep
    it. Returns the image and a note for the user when transparency is dropped."""
    if alpha is None:
        return out, ""
    if fmt not in ALPHA_FORMATS:
        return out, f"the input's transparency is dropped: {fmt} has none (write .png or .webp to keep it)"
    if alpha.size != out.size:
        alpha = alpha.resize(out.size, Image.Resampling.BICUBIC)
    out = out.convert("RGB")
    out.putalpha(alpha)
    return out, ""


def encode_like(img: Image.Image, name: str) -> bytes:
    """Encode by the output file's extension (.png, .jpg/.jpeg, .webp); any other is a ConfigError."""
    fmt = output_format(name)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 95} if fmt != "PNG" else {}))
    return buf.getvalue()
