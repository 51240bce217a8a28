"""A registry model as an ONNX graph whose batch, height and width are dynamic.

pixelmill's models pad their input to what they need inside `forward` (U-Nets to their stride, spandrel's
architectures to their size requirements) and crop the output back, so the traced graph takes any size at
least as large as the padding (the stride, or the architecture's minimum). Torch only: the `onnx` package must
be installed for torch to write the file; checking it against ONNX Runtime is the caller's business.

TorchScript-based exporter (dynamo=False): it records the shape arithmetic of the padding as graph ops, while
torch.export would have to prove the padding branches for every size (and needs onnxscript). Opset 18, for
Resize's `antialias`: a model with input_scale < 1 (the segmentation default) shrinks its input with torch's
antialiased bilinear resize, which that exporter has no translation for; `aa_bilinear` gives it one.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from pixelmill.models.checkpoint import unwrap

OPSET = 18
EXAMPLE = (37, 53)  # traced at an odd size, so the padding path is the one the graph keeps (a 0 pad is a no-op)


def aa_bilinear(g, x, output_size, align_corners, scale_factors):
    """aten::_upsample_bilinear2d_aa as ONNX Resize (linear, antialias): with exclude_outside, ONNX Runtime
    renormalises the filter at the borders as torch does (measured: within 3e-6 at odd sizes; without it 0.05)."""
    from torch.onnx import symbolic_helper

    align_corners = symbolic_helper._maybe_get_const(align_corners, "i")
    batch_channels = g.op("Slice", g.op("Shape", x), g.op("Constant", value_t=torch.tensor([0])),
                          g.op("Constant", value_t=torch.tensor([2])))
    sizes = g.op("Concat", batch_channels, g.op("Cast", output_size, to_i=7), axis_i=0)  # int64 (N, C, h, w)
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    return g.op("Resize", x, empty, empty, sizes, mode_s="linear", antialias_i=1, exclude_outside_i=1,
                coordinate_transformation_mode_s="align_corners" if align_corners else "half_pixel")


def onnx_bytes(model: nn.Module, in_channels: int, opset: int = OPSET) -> bytes:
    """The model (eval mode, float32, CPU) as ONNX bytes: input "image" (B, in_channels, H, W) in [0, 1],
    output "output" (B, C_out, H', W')."""
    model = unwrap(model).float().cpu().eval()
    torch.onnx.register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", aa_bilinear, opset)
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
