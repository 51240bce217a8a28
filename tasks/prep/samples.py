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
    format: str | None = None  # the Pillow format the file was written in: what its catalog row must say


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

    def add_image(name: str, im: Image.Image, fmt: str, size: tuple[int, int] | None = None, **save) -> None:
        files[name] = (_encode(im, fmt, **save), Expected(name, *(size or im.size), format=fmt))

    def add_broken(name: str, payload: bytes, error_kind: str) -> None:
        files[name] = (payload, Expected(name, None, None, error_kind))

    rgb = {n: Image.fromarray(getattr(skdata, n)()) for n in
           ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field")}
    gray = {n: Image.fromarray(getattr(skdata, n)()) for n in ("camera", "coins", "moon", "page", "clock")}
    for n in ("astronaut", "chelsea", "coffee"):
        add_image(f"photos/{n}.jpg", rgb[n], "JPEG", quality=92)
    add_image("photos/cat.png", rgb["cat"], "PNG")
    add_image("photos/immunohistochemistry.webp", rgb["immunohistochemistry"], "WEBP", quality=90)
    add_image("photos/hubble.tif", rgb["hubble_deep_field"], "TIFF")
    add_image("gray/camera.png", gray["camera"], "PNG")
    add_image("gray/coins.bmp", gray["coins"], "BMP")
    add_image("gray/clock.gif", gray["clock"], "GIF")
    # Odd modes that must still become ok rows.
    add_image("modes/moon-16bit.png", Image.fromarray(skdata.moon().astype(np.uint16) * 257), "PNG")
    add_image("modes/logo-rgba.png", Image.fromarray(skdata.logo()), "PNG", size=(500, 500))
    add_image("modes/chelsea-palette-transparent.png", rgb["chelsea"].quantize(64), "PNG", transparency=0)
    add_image("modes/page-la.png", Image.merge("LA", (gray["page"], gray["page"].point(lambda v: 255 - v))), "PNG")
    retina = Image.fromarray(skdata.retina()).resize((470, 470)).convert("CMYK")
    add_image("modes/retina-cmyk.jpg", retina, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a portrait shot from a phone held sideways
    w, h = rgb["rocket"].size
    add_image("modes/rocket-exif-rotated.jpg", rgb["rocket"], "JPEG", size=(h, w), quality=90, exif=exif)
    # Broken files: each must become an error row with this kind.
    good_jpeg = files["photos/astronaut.jpg"][0]
    add_broken("broken/empty.jpg", b"", "empty")
    add_broken("broken/truncated.jpg", good_jpeg[: len(good_jpeg) // 2], "truncated")
    add_broken("broken/not-an-image.png", b"this is a text file, not a PNG\n" * 20, "not_image")
    add_broken("broken/bomb.png", _png_with_size(60_000, 60_000), "too_large")
    return files


def write_sample_photos(url: str) -> list[Expected]:
    """Write the sample set under `url` (any storage) and return the expected catalog facts."""
    expected = []
    for name, (payload, exp) in sample_files().items():
        storage.write_bytes(storage.join(url, name), payload)
        expected.append(exp)
    storage.write_bytes(storage.join(url, "README.txt"), b"pixelmill sample photographs (scikit-image data)\n")
    return expected
