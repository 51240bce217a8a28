"""A registry model as an ONNX graph whose batch, height and width are dynamic.

pixelmill's models pad their input to what they need inside `forward` (U-Nets to their stride, spandrel's
architectures to their size requirements) and crop the output back, so the traced graph takes any size at
least as large as the padding (the stride, or the architecture's minimum). Torch only: the `onnx` package must
be installed for torch to write the file; checking it against ONNX Runtime is the caller's business.

TorchScript-based exporter (dynamo=False): it records the shape arithmetic of the padding as graph ops, while
torch.export would have to prove the padding branches for every size (and needs onnxscript).
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from pixelmill.models.checkpoint import unwrap

OPSET = 17
EXAMPLE = (37, 53)  # traced at an odd size, so the padding path is the one the graph keeps (a 0 pad is a no-op)


def onnx_bytes(model: nn.Module, in_channels: int, opset: int = OPSET) -> bytes:
    """The model (eval mode, float32, CPU) as ONNX bytes: input "image" (B, in_channels, H, W) in [0, 1],
    output "output" (B, C_out, H', W')."""
    model = unwrap(model).float().cpu().eval()
    x = torch.rand(1, in_channels, *EXAMPLE, generator=torch.Generator().manual_seed(0))  # (1, C_in, 37, 53)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # the tracer warns that the padding's Python arithmetic is traced: here that is the point
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, input_names=["image"], output_names=["output"], opset_version=opset,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "output": {0: "batch", 2: "out_height", 3: "out_width"}},
                          dynamo=False)
    return buf.getvalue()
