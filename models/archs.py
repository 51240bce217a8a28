"""The names `build_model` accepts, with a line each: torch-free, so `pixelmill models archs` answers at once.

models/factory.py maps each name to its class; tests/models/test_models.py checks the two agree.
"""

from __future__ import annotations

ARCH_NAMES: dict[str, str] = {
    "unet-resnet18": "U-Net, torchvision ResNet-18 encoder (ImageNet weights when in the torch cache)",
    "unet-resnet34": "U-Net, torchvision ResNet-34 encoder (ImageNet weights when in the torch cache)",
    "unet-resnet50": "U-Net, torchvision ResNet-50 encoder (ImageNet weights when in the torch cache)",
    "unet-plain": "a small U-Net from scratch: trains on a CPU in minutes",
    "bicubic": "bicubic resize and a per-pixel colour matrix (identity at first): the baseline, and a reference model",
    "critic": "spectral-norm conv critic for GAN fine-tuning",
    "spandrel": "a model trained elsewhere (ESRGAN, SwinIR, HAT, ... as spandrel detects): `pixelmill models import`",
    "smp-unet-resnet34": "segmentation_models.pytorch U-Net, ResNet-34 encoder (ImageNet weights when cached)",
    "smp-unet-efficientnet-b0": "segmentation_models.pytorch U-Net, EfficientNet-B0 encoder (ImageNet when cached)",
    "smp-unet-mobilenet_v2": "segmentation_models.pytorch U-Net, MobileNetV2 encoder (ImageNet weights when cached)",
}
