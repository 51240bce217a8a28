"""Built-in sample data: real photographs shipped in scikit-image's wheel, saved in every supported format
and odd mode, plus deliberately broken files. Used by `pixelmill demo` and the tests.

`write_sample_photos` returns what a correct ingest must find for each file, so callers can check it.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image
from skimage import data as skdata

from pixelmill.tasks.core import storage


@dataclass(frozen=True)
class Expected:
    name: str
    width: int | None  # None for files that must be error rows
    height: int | None
    error_kind: str | None = None


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb's calling card."""
    raw = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(raw[24:29])
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(raw)


def sample_files() -> dict[str, tuple[bytes, Expected]]:
    """name -> (file bytes, what ingest must report)."""
    files: dict[str, tuple[bytes, Expected]] = {}

    def add(name: str, payload: bytes, size: tuple[int, int] | None, error_kind: str | None = None) -> None:
        files[name] = (payload, Expected(name, *(size or (None, None)), error_kind))

    rgb = {n: Image.fromarray(getattr(skdata, n)()) for n in
           ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field")}
    gray = {n: Image.fromarray(getattr(skdata, n)()) for n in ("camera", "coins", "moon", "page", "clock")}
    for n in ("astronaut", "chelsea", "coffee"):
        add(f"photos/{n}.jpg", _encode(rgb[n], "JPEG", quality=92), rgb[n].size)
    add("photos/cat.png", _encode(rgb["cat"], "PNG"), rgb["cat"].size)
    add("photos/immunohistochemistry.webp", _encode(rgb["immunohistochemistry"], "WEBP", quality=90),
        rgb["immunohistochemistry"].size)
    add("photos/hubble.tif", _encode(rgb["hubble_deep_field"], "TIFF"), rgb["hubble_deep_field"].size)
    add("gray/camera.png", _encode(gray["camera"], "PNG"), gray["camera"].size)
    add("gray/coins.bmp", _encode(gray["coins"], "BMP"), gray["coins"].size)
    add("gray/clock.gif", _encode(gray["clock"], "GIF"), gray["clock"].size)
    # Odd modes that must still become ok rows.
    moon16 = Image.fromarray(skdata.moon().astype(np.uint16) * 257)
    add("modes/moon-16bit.png", _encode(moon16, "PNG"), moon16.size)
    add("modes/logo-rgba.png", _encode(Image.fromarray(skdata.logo()), "PNG"), (500, 500))
    palette = rgb["chelsea"].quantize(64)
    add("modes/chelsea-palette-transparent.png", _encode(palette, "PNG", transparency=0), palette.size)
    page_la = Image.merge("LA", (gray["page"], gray["page"].point(lambda v: 255 - v)))
    add("modes/page-la.png", _encode(page_la, "PNG"), page_la.size)
    retina = Image.fromarray(skdata.retina()).resize((470, 470)).convert("CMYK")
    add("modes/retina-cmyk.jpg", _encode(retina, "JPEG", quality=90), retina.size)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a portrait shot from a phone held sideways
    w, h = rgb["rocket"].size
    add("modes/rocket-exif-rotated.jpg", _encode(rgb["rocket"], "JPEG", quality=90, exif=exif), (h, w))
    # Broken files: each must become an error row with this kind.
    good_jpeg = files["photos/astronaut.jpg"][0]
    add("broken/empty.jpg", b"", None, "empty")
    add("broken/truncated.jpg", good_jpeg[: len(good_jpeg) // 2], None, "truncated")
    add("broken/not-an-image.png", b"this is a text file, not a PNG\n" * 20, None, "not_image")
    add("broken/bomb.png", _png_with_size(60_000, 60_000), None, "too_large")
    return files


def write_sample_photos(url: str) -> list[Expected]:
    """Write the sample set under `url` (any storage) and return the expected catalog facts."""
    expected = []
    for name, (payload, exp) in sample_files().items():
        storage.write_bytes(storage.join(url, name), payload)
        expected.append(exp)
    storage.write_bytes(storage.join(url, "README.txt"), b"pixelmill sample photographs (scikit-image data)\n")
    return expected
