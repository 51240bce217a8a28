"""Run a registered segmentation model on one image: class indices, a palette PNG, a colour overlay."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from pixelmill.models.device import to_tensor
from pixelmill.tasks.core.classes import ClassMap, overlay, to_palette_image


@torch.inference_mode()
def segment_image(model: torch.nn.Module, config: dict, img: Image.Image,
                  device: torch.device) -> tuple[np.ndarray, ClassMap]:
    """(H, W) uint8 class indices of an image, and the model's class map (stored with its weights)."""
    x = to_tensor(np.asarray(img.convert("RGB"))).unsqueeze(0).to(device)  # (1, 3, H, W)
    indices = model.to(device).eval()(x).argmax(1)[0].to(torch.uint8).cpu().numpy()  # (H, W)
    return indices, ClassMap(**config["classes"])


def mask_png(indices: np.ndarray, classes: ClassMap) -> bytes:
    """A palette PNG: the pixel values are the class indices (what tools read), the palette their colours."""
    buf = io.BytesIO()
    to_palette_image(indices, classes).save(buf, "PNG")
    return buf.getvalue()


def overlay_png(img: Image.Image, indices: np.ndarray, classes: ClassMap, alpha: float = 0.5) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(overlay(np.asarray(img.convert("RGB")), indices, classes, alpha)).save(buf, "PNG")
    return buf.getvalue()
