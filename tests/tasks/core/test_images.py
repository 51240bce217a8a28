import io

import numpy as np
import pytest
from PIL import Image

from pixelmill.tasks.core.images import ImageError, decode_image, normalize_mode, open_image
from pixelmill.tasks.prep.samples import _png_with_size


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def gradient(w: int = 64, h: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1).astype(np.uint8)


RGB = Image.fromarray(gradient())
NOISY_PNG = encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)), "PNG")


@pytest.mark.parametrize("fmt,kwargs", [("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}),
                                        ("TIFF", {}), ("BMP", {}), ("GIF", {})])
def test_every_format_decodes_to_rgb_of_the_right_size(fmt, kwargs):
    im, facts = open_image(encode(RGB, fmt, **kwargs))
    assert (facts.width, facts.height, facts.format) == (64, 48, fmt)
    out = normalize_mode(im)
    assert out.mode == "RGB" and out.size == (64, 48)
    if fmt in ("PNG", "WEBP", "TIFF", "BMP"):  # lossless: exact pixels back
        assert np.array_equal(np.asarray(out), gradient())


def test_gif_gives_the_first_frame():
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue])
    assert tuple(decode_image(data).getpixel((4, 4))) == (255, 0, 0)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im, facts = open_image(encode(RGB, "JPEG", exif=exif))
    assert (facts.width, facts.height) == (48, 64)
    assert im.size == (48, 64)


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGB", "CMYK", "YCbCr", "I", "F"])
def test_modes_normalise_to_8bit_rgb_and_l(mode):
    src = RGB.convert(mode) if mode not in ("I", "F") else RGB.convert("L").convert(mode)
    for target in ("RGB", "L"):
        out = normalize_mode(src, target)
        assert out.mode == target and out.size == (64, 48)
        assert np.asarray(out).dtype == np.uint8


def test_16bit_greyscale_keeps_its_full_range():
    arr = (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)  # 0 .. ~64500
    im, facts = open_image(encode(Image.fromarray(arr), "PNG"))
    assert facts.mode.startswith("I")
    out = np.asarray(normalize_mode(im, "L")).astype(int)
    assert np.abs(out - np.rint(arr / 257)).max() <= 1
    assert out.max() > 245  # not clipped to the low byte


def test_16bit_rgb_tiff_becomes_8bit_rgb():
    import tifffile

    arr = np.random.default_rng(0).integers(0, 65535, (12, 10, 3)).astype(np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="rgb")
    out = np.asarray(decode_image(buf.getvalue())).astype(int)
    assert out.shape == (12, 10, 3)
    assert np.abs(out - (arr >> 8)).max() <= 1


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_transparent_pixels_take_the_background(mode):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = 40
    rgba[:, 5:, 3] = 255  # right half opaque, left half fully transparent
    src = Image.fromarray(rgba, "RGBA")
    src = src.convert(mode) if mode != "PA" else src.convert("P").convert("PA")
    out = np.asarray(normalize_mode(src, "RGB", background=(0, 255, 0)))
    assert tuple(out[0, 0]) == (0, 255, 0)
    assert out[0, 9, 1] < 100  # opaque dark pixel kept


def test_palette_with_transparency_index_is_composited():
    p = Image.new("P", (6, 6), 0)
    p.putpalette([10, 10, 10] + [200, 0, 0] * 255)
    p.paste(1, (3, 0, 6, 6))
    im, _ = open_image(encode(p, "PNG", transparency=0))
    out = np.asarray(normalize_mode(im, background=(255, 255, 255)))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 5]) == (200, 0, 0)


@pytest.mark.parametrize("payload,kind", [
    (b"", "empty"),
    (encode(RGB, "JPEG")[: len(encode(RGB, "JPEG")) // 2], "truncated"),
    (NOISY_PNG[:2000], "truncated"),
    (b"hello, I am text" * 10, "not_image"),
    (encode(RGB, "PNG")[:20] + b"\xff" + encode(RGB, "PNG")[21:], "not_image"),  # IHDR fails its CRC
    (NOISY_PNG[:NOISY_PNG.find(b"IDAT") + 60] + bytes([NOISY_PNG[NOISY_PNG.find(b"IDAT") + 60] ^ 0xFF])
     + NOISY_PNG[NOISY_PNG.find(b"IDAT") + 61:], "corrupt"),  # a flipped byte in the compressed pixels
])
def test_broken_files_raise_a_typed_error(payload, kind):
    with pytest.raises(ImageError) as info:
        decode_image(payload)
    assert info.value.kind == kind
    assert kind in str(info.value)


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageError) as info:
        open_image(_png_with_size(50_000, 50_000), max_pixels=100_000_000)
    assert info.value.kind == "too_large" and "50000x50000" in info.value.message
    # the limit is the caller's, not PIL's: a small limit rejects an ordinary image, a large one allows it
    with pytest.raises(ImageError):
        open_image(encode(RGB, "PNG"), max_pixels=100)
    assert open_image(encode(RGB, "PNG"), max_pixels=64 * 48)[1].width == 64


def test_image_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(ImageError("truncated", "cut short")))
    assert (err.kind, err.message) == ("truncated", "cut short")
