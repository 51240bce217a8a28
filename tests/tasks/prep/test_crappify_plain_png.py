"""Crappify's libpng path for plain PNGs (`images.open_plain_png`): Pillow's pixels and facts, the same pair bytes
for every shipped recipe, and Pillow's own checks for every file it does not take."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.images import ImageError, normalize_mode, open_image, open_plain_png
from pixelmill.tasks.prep import crappify
from pixelmill.tasks.prep.recipes import RECIPES, apply_recipe
from tests.helpers import crappify_local, ingest_local, make_image


def png(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_chunks(data: bytes, *chunks: bytes) -> bytes:
    """`data` with chunks inserted after IHDR (which ends at byte 33)."""
    return data[:33] + b"".join(chunks) + data[33:]


PHOTO = make_image(97, 61, seed=3)
RGB_PNG = png(PHOTO)
NOTES = (chunk(b"gAMA", struct.pack(">I", 45455)), chunk(b"sRGB", b"\x00"), chunk(b"cHRM", bytes(32)),
         chunk(b"tIME", bytes([7, 234, 12, 7, 10, 0, 0])))
PLAIN = {
    "rgb": RGB_PNG,
    "grey": png(PHOTO.convert("L")),
    "dpi": png(PHOTO, dpi=(300, 300)),
    "colour notes": with_chunks(RGB_PNG, *NOTES),
    "bytes after IEND": RGB_PNG + b"\x00pixelmill-bench-copy-1\x00",
    "many IDAT chunks": png(make_image(300, 200, seed=4), compress_level=0),
}


@pytest.mark.parametrize("name", PLAIN)
def test_a_plain_png_gives_pillows_pixels_and_facts(name):
    data = PLAIN[name]
    pillow, facts = open_image(data)
    fast = open_plain_png(data)
    assert fast is not None
    im, fast_facts = fast
    assert fast_facts == facts and im.mode == pillow.mode and im.size == pillow.size
    assert np.array_equal(np.asarray(im), np.asarray(pillow))


@pytest.mark.parametrize("name", PLAIN)
def test_every_recipe_makes_the_same_bytes_from_either_decoder(name):
    data = PLAIN[name]
    pillow, _ = open_image(data)
    im, _ = open_plain_png(data)
    for recipe in RECIPES.values():
        a, b = apply_recipe(recipe, normalize_mode(pillow), 11), apply_recipe(recipe, normalize_mode(im), 11)
        assert (a.lr_bytes, a.hr_bytes, a.params) == (b.lr_bytes, b.hr_bytes, b.params), recipe.name


def icc_png() -> bytes:
    return png(PHOTO, icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


def exif_png() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # turned: open_image turns it upright
    return png(PHOTO, exif=exif)


def interlaced_header() -> bytes:
    """RGB_PNG whose IHDR says Adam7 (Pillow writes no interlaced PNG; the header alone must send it to Pillow)."""
    return RGB_PNG[:8] + chunk(b"IHDR", RGB_PNG[16:28] + b"\x01") + RGB_PNG[33:]


NOT_PLAIN = {
    "palette": lambda: png(PHOTO.convert("P")),
    "alpha": lambda: png(PHOTO.convert("RGBA")),
    "grey with alpha": lambda: png(PHOTO.convert("LA")),
    "16-bit grey": lambda: png(Image.fromarray(np.asarray(PHOTO.convert("L")).astype(np.uint16) * 257)),
    "1-bit": lambda: png(PHOTO.convert("1")),
    "transparent colour": lambda: png(PHOTO, transparency=(0, 0, 0)),
    "ICC profile (encoders copy it)": icc_png,
    "EXIF orientation": exif_png,
    "interlaced": interlaced_header,
    "text": lambda: with_chunks(RGB_PNG, chunk(b"tEXt", b"Comment\x00hello")),
    "unknown chunk": lambda: with_chunks(RGB_PNG, chunk(b"xYzW", b"1")),
    "bad CRC": lambda: RGB_PNG[:29] + b"\x00\x00\x00\x00" + RGB_PNG[33:],
    "truncated": lambda: RGB_PNG[: len(RGB_PNG) // 2],
    "no IEND": lambda: RGB_PNG[:-12],
    "JPEG": lambda: (buf := io.BytesIO(), PHOTO.save(buf, "JPEG"), buf.getvalue())[-1],
    "not an image": lambda: b"not an image, just some bytes to fill a header and a little more",
    "empty": lambda: b"",
}


@pytest.mark.parametrize("name", NOT_PLAIN)
def test_anything_else_is_left_to_pillow(name):
    assert open_plain_png(NOT_PLAIN[name]()) is None


def test_a_corrupt_image_stream_is_left_to_pillow_which_names_it():
    at = RGB_PNG.index(b"IDAT") + 40
    data = RGB_PNG[:at] + bytes([RGB_PNG[at] ^ 0xFF]) + RGB_PNG[at + 1:]
    assert open_plain_png(data) is None
    with pytest.raises(ImageError):
        open_image(data)


def test_the_pixel_limit_is_pillows_too():
    assert open_plain_png(RGB_PNG, max_pixels=97 * 61 - 1) is None
    assert open_plain_png(RGB_PNG, max_pixels=97 * 61) is not None


def test_crappify_makes_the_same_files_and_rows_without_the_fast_path(tmp_path, monkeypatch):
    src = tmp_path / "src"
    sources = {**PLAIN, "icc": icc_png(), "palette": NOT_PLAIN["palette"](), "exif": exif_png()}
    for i, data in enumerate(sources.values()):
        storage.write_bytes(str(src / f"img{i:02d}.png"), data)
    ws = str(tmp_path / "ws")
    ingest_local(str(src), ws)

    def made(name: str) -> tuple[list[dict], dict[str, bytes]]:
        rows = crappify_local(ws, recipe=name.split("@")[0], name=name.replace("@", "-"))
        written = [r["lr_uri"] for r in rows] + [r["hr_uri"] for r in rows if r["hr_kind"] == "copy"]
        files = {uri.rsplit("/", 1)[-1]: storage.read_bytes(uri) for uri in written}
        keep = ("pair_id", "image_uri", "status", "params", "hr_kind", "hr_sha256", "hr_crop", "hr_width",
                "hr_height", "lr_width", "lr_height")
        return sorted(({k: r[k] for k in keep} for r in rows), key=lambda r: r["pair_id"]), files

    for recipe in ("lesson7", "sr-x2", "watermark"):
        fast = made(recipe)
        with monkeypatch.context() as m:
            m.setattr(crappify, "open_plain_png", lambda data, max_pixels: None)
            slow = made(f"{recipe}@pillow")
        assert fast == slow, recipe
        assert all(r["status"] == "ok" for r in fast[0]) and len(fast[0]) == len(sources)
