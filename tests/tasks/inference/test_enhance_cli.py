"""`pixelmill enhance` with odd arguments: the output's extension decides the format (an unknown one is an error),
and an input's transparency survives PNG and WebP outputs (the model works on RGB, the alpha is resized)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pixelmill.flows.cli import app
from pixelmill.models.factory import build_model
from pixelmill.tasks.core import registry
from pixelmill.tasks.core.images import output_format

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> str:
    """An untrained x2 residual U-Net in a real registry: enough to run enhance end to end."""
    ws = str(tmp_path_factory.mktemp("enhance") / "ws")
    net = build_model({"arch": "unet-plain", "scale": 2, "base": 8, "depth": 2, "residual": True})
    registry.save(ws, "x2", net, config={"task": "restoration", "scale": 2, "in_channels": 3}, metadata={})
    return ws


def palette_with_transparency(path) -> Image.Image:
    """A 24x16 palette PNG whose left half is fully transparent (palette index 0), as the demo's samples have."""
    im = Image.new("P", (24, 16), 1)
    im.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    im.paste(0, (0, 0, 12, 16))
    im.save(path, transparency=0)
    return im


@pytest.mark.parametrize("ext", ["png", "webp"])
def test_alpha_survives_png_and_webp(workspace, tmp_path, ext):
    src, out = tmp_path / "in.png", tmp_path / f"out.{ext}"
    palette_with_transparency(src)
    result = runner.invoke(app, ["enhance", "x2", str(src), str(out), "--workspace", workspace])
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.format == ext.upper() and im.mode == "RGBA" and im.size == (48, 32)
        alpha = np.asarray(im.getchannel("A"))
    assert alpha[:, :20].max() == 0 and alpha[:, 28:].min() == 255  # transparent left, opaque right, away from the edge


def test_jpeg_output_says_the_alpha_is_dropped(workspace, tmp_path):
    src, out = tmp_path / "in.png", tmp_path / "out.jpg"
    palette_with_transparency(src)
    result = runner.invoke(app, ["enhance", "x2", str(src), str(out), "--workspace", workspace])
    assert result.exit_code == 0, result.output
    assert "note: JPEG has no transparency: alpha dropped" in result.output
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.size == (48, 32)


def test_unknown_extension_writes_nothing(workspace, tmp_path):
    src, out = tmp_path / "in.png", tmp_path / "out.xyz"
    palette_with_transparency(src)
    result = runner.invoke(app, ["enhance", "x2", str(src), str(out), "--workspace", workspace])
    assert result.exit_code == 1 and not out.exists()
    assert f"error: {out}: unknown output extension .xyz" in result.output


def test_formats_by_extension():
    names = ("a.PNG", "b.jpg", "c.jpeg", "s3://x/d.webp", "e.tif", "f.TIFF")
    assert [output_format(n) for n in names] == ["PNG", "JPEG", "JPEG", "WEBP", "TIFF", "TIFF"]
    for bad in ("a.xyz", "noext", "dir.png/file", "g.heic"):
        with pytest.raises(Exception, match="unknown output extension"):
            output_format(bad)
