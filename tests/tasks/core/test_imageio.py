from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import ExifTags, Image, ImageOps

from pixelmill.tasks.core.imageio import WRITE_FORMATS, orient, read_picture, write_picture
from pixelmill.tasks.core.images import ImageError
from pixelmill.tasks.core.metadata import (
    Metadata,
    decode_raw_profile,
    exif_fields,
    for_output,
    iptc_fields,
    load_exif,
    photoshop_resources,
    provenance_of,
    read_metadata,
    xmp_fields,
)
from tests.corpus import ARTIST, COPYRIGHT, DATETIME, DESCRIPTION, TITLE, grey_profile, make_corpus, scene, to8, to16

CORPUS = ["photo.jpg", "widegamut.png", "grey16.png", "grey16.tif", "rgb16.png", "rgb16.tif", "rgba16.png",
          "soft_alpha.png", "cmyk.jpg", "photo.heic", "photo.avif", "dup/a.jpg", "dup/a.tif"]
PROVENANCE = {"model_version": "unet-x2@3", "weights_sha256": "f" * 64, "input_sha256": "a" * 64, "run_id": "r-17"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return folder, make_corpus(folder)


def save(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# ------------------------------------------------------------------ reading


def test_the_corpus_is_what_these_tests_expect(corpus):
    assert sorted(corpus[1]) == sorted(CORPUS)


def test_images_registers_heif_and_lists_the_new_extensions(corpus):
    """In a fresh interpreter (the corpus registers the opener itself): importing images is enough."""
    folder, _ = corpus
    code = ("import sys; from pixelmill.tasks.core.images import IMAGE_EXTENSIONS, open_image; "
            "assert {'.heic', '.heif', '.avif'} <= IMAGE_EXTENSIONS; "
            "print(open_image(open(sys.argv[1], 'rb').read())[1].format)")
    done = subprocess.run([sys.executable, "-c", code, str(folder / "photo.heic")], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "HEIF"


@pytest.mark.parametrize("name", CORPUS)
def test_reads_every_corpus_file_at_full_depth_upright(corpus, name):
    folder, facts = corpus
    fact = facts[name]
    pic = read_picture((folder / name).read_bytes())
    assert pic.format == fact["format"]
    assert pic.size == (fact["width"], fact["height"])
    assert pic.depth == fact["depth"]
    assert pic.pixels.dtype == (np.uint16 if fact["depth"] == 16 else np.uint8)
    assert pic.mode == fact["mode"]
    assert (pic.alpha is not None) == fact["has_alpha"]
    expected = fact["pixels"]
    assert pic.pixels.shape == expected.shape
    if fact["lossless"]:
        assert np.array_equal(pic.pixels, expected)
        if fact["has_alpha"]:
            assert np.array_equal(pic.alpha, fact["alpha"])
    else:
        assert mean_diff(pic.pixels, expected) < 6  # lossy: close, and upright (turned it would be ~40 off)
    assert pic.notes == (["CMYK converted to sRGB through its ICC profile"] if fact["mode"] == "CMYK" else [])


@pytest.mark.parametrize("name", ["grey16.png", "grey16.tif", "rgb16.png", "rgb16.tif", "rgba16.png"])
def test_16_bit_values_are_not_cut_to_8_bits(corpus, name):
    folder, _ = corpus
    pic = read_picture((folder / name).read_bytes())
    shown = pic.pixels if pic.alpha is None else pic.pixels[pic.alpha >= 200]  # the cut-out's rest is black
    assert (shown % 257 != 0).all()  # a decoder that kept the high byte would give multiples of 257
    if pic.alpha is not None:
        assert pic.alpha.dtype == np.uint16 and (pic.alpha % 257 != 0).all()  # a soft edge at 16 bits


def test_soft_alpha_keeps_its_gradient_and_black_transparent_pixels(corpus):
    folder, facts = corpus
    pic = read_picture((folder / "soft_alpha.png").read_bytes())
    partial = (pic.alpha > 0) & (pic.alpha < 255)
    assert partial.sum() > 100 and (pic.alpha == 255).sum() > 1000
    assert (pic.pixels[pic.alpha == 0] == 0).all()


def test_cmyk_goes_to_srgb_through_its_profile_and_drops_it(corpus):
    folder, facts = corpus
    data = (folder / "cmyk.jpg").read_bytes()
    pic = read_picture(data)
    assert pic.mode == "CMYK" and pic.pixels.shape == (64, 96, 3)
    assert pic.meta.icc is None  # the pixels are sRGB now: the CMYK profile no longer describes them
    assert mean_diff(pic.pixels, facts["cmyk.jpg"]["pixels"]) < 4


def test_cmyk_without_profile_uses_the_plain_conversion():
    ink = np.zeros((8, 8, 4), np.uint8)
    ink[..., 0] = 255  # pure cyan
    pic = read_picture(save(Image.fromarray(ink, "CMYK"), "JPEG", quality=95))
    assert pic.notes == ["CMYK without an ICC profile converted to RGB by formula"]
    assert tuple(pic.pixels[4, 4]) == pytest.approx((0, 255, 255), abs=3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow_for_every_exif_orientation(orientation):
    arr = np.arange(5 * 7, dtype=np.uint8).reshape(5, 7)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    im = Image.fromarray(arr)
    im.info["exif"] = exif.tobytes()
    assert np.array_equal(orient(arr, orientation), np.asarray(ImageOps.exif_transpose(im)))


@pytest.mark.parametrize("orientation", [3, 5, 6, 7, 8])
@pytest.mark.parametrize("alpha", [False, True])
def test_16_bit_colour_is_turned_upright_with_its_alpha(orientation, alpha):
    rgba = to16(scene(40, 24, seed=orientation))
    rgba = np.dstack([rgba, rgba[..., 0][..., None]]) if alpha else rgba
    buf = io.BytesIO()
    tifffile.imwrite(buf, rgba, photometric="rgb", extrasamples=("unassalpha",) if alpha else None, metadata=None,
                     extratags=[(274, "H", 1, orientation, True)])
    pic = read_picture(buf.getvalue())
    assert np.array_equal(pic.pixels, orient(rgba[..., :3], orientation))
    if alpha:
        assert np.array_equal(pic.alpha, orient(rgba[..., 3], orientation))


def test_palette_transparency_becomes_alpha():
    im = Image.new("P", (6, 4), 1)
    im.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    im.putpixel((0, 0), 0)
    pic = read_picture(save(im, "PNG", transparency=0))
    assert pic.mode == "P" and pic.depth == 8 and pic.pixels.shape == (4, 6, 3)
    assert pic.alpha[0, 0] == 0 and pic.alpha[1, 1] == 255
    assert tuple(pic.pixels[1, 1]) == (200, 30, 40)
    gif = read_picture(save(im, "GIF", transparency=0))
    assert gif.alpha is not None and gif.alpha[0, 0] == 0


def test_bilevel_grey_alpha_and_grey_transparency():
    bits = Image.fromarray(np.eye(8, dtype=bool))
    pic = read_picture(save(bits, "PNG"))
    assert pic.mode == "1" and pic.pixels.dtype == np.uint8 and set(np.unique(pic.pixels)) == {0, 255}
    la = read_picture(save(Image.fromarray(np.dstack([np.full((4, 4), 90, np.uint8), np.full((4, 4), 30, np.uint8)])),
                           "PNG"))
    assert la.pixels.shape == (4, 4) and la.pixels[0, 0] == 90 and la.alpha[0, 0] == 30
    grey = read_picture(save(Image.fromarray(np.array([[0, 7], [7, 9]], np.uint8)), "PNG", transparency=7))
    assert grey.pixels.ndim == 2 and grey.alpha.tolist() == [[255, 0], [0, 255]]


def test_32_bit_and_float_grey_become_16_bit():
    floats = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    buf = io.BytesIO()
    tifffile.imwrite(buf, floats, metadata=None)
    pic = read_picture(buf.getvalue())
    assert pic.depth == 16 and pic.pixels.dtype == np.uint16
    assert pic.pixels[0, 0] == 0 and pic.pixels[-1, -1] == 65535 and pic.notes == []
    wide = np.arange(64, dtype=np.int32).reshape(8, 8) * 100_000  # past 16 bits
    buf = io.BytesIO()
    tifffile.imwrite(buf, wide, metadata=None)
    pic = read_picture(buf.getvalue())
    assert pic.pixels[-1, -1] == 65535 and pic.pixels[0, 1] == round(100_000 * 65535 / (63 * 100_000))
    assert pic.notes == ["32-bit grey stretched to 16 bits from its own range"]


def test_ycbcr_and_lab_become_rgb():
    rgb = to8(scene(16, 16, seed=1))
    pic = read_picture(save(Image.fromarray(rgb).convert("YCbCr"), "TIFF"))
    assert pic.pixels.shape == (16, 16, 3) and mean_diff(pic.pixels, rgb) < 3
    lab = np.zeros((4, 4, 3), np.uint8)  # Pillow's LAB holds a* and b* as signed bytes: 0 is neutral
    lab[:2, :, 0] = 255
    lab[2:, :, 0], lab[2:, :, 1] = 128, 60  # L* 50, a* +60: a clear red
    pic = read_picture(save(Image.fromarray(lab, "LAB"), "TIFF"))
    assert pic.notes == ["LAB converted to sRGB"]
    assert (pic.pixels[:2] > 245).all()  # L* 100, neutral: white
    red, green, blue = (int(v) for v in pic.pixels[3, 0])
    assert red > green + 80 and red > blue + 40


@pytest.mark.parametrize("data,kind", [(b"", "empty"), (b"plain text, not a picture", "not_image")])
def test_bad_input_is_an_image_error(data, kind):
    with pytest.raises(ImageError) as err:
        read_picture(data)
    assert err.value.kind == kind


def test_truncated_and_too_large_are_image_errors(corpus):
    folder, _ = corpus
    data = (folder / "rgb16.png").read_bytes()
    with pytest.raises(ImageError) as err:
        read_picture(data[: len(data) // 2])
    assert err.value.kind == "truncated"
    with pytest.raises(ImageError) as err:
        read_picture(data, max_pixels=100)
    assert err.value.kind == "too_large"


# ------------------------------------------------------------------ writing


def source_meta(corpus) -> Metadata:
    """The camera JPEG's metadata (EXIF, XMP, IPTC, sRGB ICC, 300 dpi) made an output's: x2, with provenance."""
    folder, _ = corpus
    data = (folder / "photo.jpg").read_bytes()
    return read_metadata(Image.open(io.BytesIO(data)), data)


LOSSLESS = ("PNG", "TIFF")
CASES = [(fmt, depth, channels, alpha) for fmt in WRITE_FORMATS for depth in (8, 16) for channels in (1, 3)
         for alpha in (False, True)]


@pytest.mark.parametrize("fmt,depth,channels,alpha", CASES)
def test_write_then_read_keeps_pixels_and_metadata(corpus, fmt, depth, channels, alpha):
    w, h = 72, 56
    colour = scene(w, h, seed=channels + depth)
    colour = colour.mean(axis=-1) if channels == 1 else colour
    pixels = to16(colour) if depth == 16 else to8(colour)
    mask = np.clip(np.linspace(-0.5, 1.5, w)[None, :].repeat(h, 0), 0, 1)
    alpha_arr = (to16(mask) if depth == 16 else to8(mask)) if alpha else None
    source = source_meta(corpus)
    source = replace(source, icc=grey_profile()) if channels == 1 else source  # a grey scan's own profile
    meta = for_output(source, w, h, 2, PROVENANCE)

    data, notes = write_picture(pixels, alpha_arr, fmt, meta)
    pic = read_picture(data)

    keeps_depth = depth == 8 or fmt in LOSSLESS
    keeps_alpha = fmt != "JPEG"
    expected = [f"{fmt} has no transparency: alpha dropped"] if alpha and not keeps_alpha else []
    expected += [f"{fmt} has no 16-bit: written at 8 bits"] if not keeps_depth else []
    expected += ["WEBP has no IPTC block: IPTC not kept (XMP kept)"] if fmt == "WEBP" else []
    grey_alpha_tiff = fmt == "TIFF" and depth == 16 and channels == 1 and alpha
    expected += ["TIFF: 16-bit grey with alpha written as RGBA (Pillow opens no 16-bit grey+alpha TIFF)"] * grey_alpha_tiff
    grey_as_colour = channels == 1 and (fmt == "WEBP" or grey_alpha_tiff)  # written as R = G = B
    expected += ["ICC profile dropped: a GRAY profile does not fit RGB pixels"] * grey_as_colour
    assert sorted(notes) == sorted(expected)

    assert pic.format == fmt and pic.size == (w, h)
    assert pic.depth == (depth if keeps_depth else 8)
    want = pixels if keeps_depth else ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if grey_alpha_tiff:
        assert (pic.pixels == pic.pixels[..., :1]).all()
    got = pic.pixels.mean(axis=-1).round().astype(pic.pixels.dtype) if grey_as_colour else pic.pixels
    assert got.shape == want.shape
    if fmt in LOSSLESS:
        assert np.array_equal(got, want)
    else:  # lossy: close where it can be seen (WebP may change what is fully transparent)
        seen = np.ones((h, w), bool) if alpha_arr is None or not keeps_alpha else to8(mask) > 0
        assert mean_diff(got[seen], want[seen]) < 6
    if alpha and keeps_alpha:
        want_alpha = alpha_arr if keeps_depth else to8(mask)
        assert pic.alpha is not None
        assert np.array_equal(pic.alpha, want_alpha) if fmt in LOSSLESS else mean_diff(pic.alpha, want_alpha) < 3
    else:
        assert pic.alpha is None

    fields = exif_fields(pic.meta.exif)
    assert {k: fields.get(k) for k in ("Artist", "Copyright", "ImageDescription", "DateTime")} == {
        "Artist": ARTIST, "Copyright": COPYRIGHT, "ImageDescription": DESCRIPTION, "DateTime": DATETIME}
    assert fields["DateTimeOriginal"] == DATETIME  # the ExifIFD, TIFF included
    assert fields["Orientation"] == 1
    assert (fields["PixelXDimension"], fields["PixelYDimension"]) == (w, h)
    assert pic.meta.dpi == (600.0, 600.0)  # 300 dpi at twice the pixels
    assert xmp_fields(pic.meta.xmp)["dc:title"] == TITLE
    assert provenance_of(data) == PROVENANCE
    assert pic.meta.icc == (None if grey_as_colour else meta.icc)
    assert iptc_fields(pic.meta.iptc).get("by-line") == (None if fmt == "WEBP" else ARTIST)
    assert load_exif(pic.meta.exif).get_ifd(ExifTags.IFD.IFD1) == {}  # no stale thumbnail


def test_writing_turns_a_stale_orientation_to_1(corpus):
    meta = source_meta(corpus)  # Orientation 6, straight from the file: not passed through for_output
    pixels = to8(scene(30, 20, seed=3))
    for fmt in WRITE_FORMATS:
        data, _ = write_picture(pixels, None, fmt, meta)
        pic = read_picture(data)
        assert pic.size == (30, 20) and exif_fields(pic.meta.exif)["Orientation"] == 1, fmt


def test_16_bit_to_8_rounds():
    values = np.array([[0, 128, 129, 32896, 65278, 65535]], np.uint16)
    data, _ = write_picture(values, None, "JPEG", Metadata(), quality=100)
    assert [int(v) for v in values[0].astype(float) * 255 / 65535 + 0.5] == [0, 0, 1, 128, 254, 255]
    assert np.abs(read_picture(data).pixels.astype(int) - [[0, 0, 1, 128, 254, 255]]).max() <= 1


def test_png_chunks_are_where_readers_look(corpus):
    meta = for_output(source_meta(corpus), 16, 16, 1, PROVENANCE)
    meta = Metadata(**{**meta.__dict__, "text": {"Software": "a scanner", "Comment": "Zoë's"}})
    for depth in (np.uint8, np.uint16):
        data, notes = write_picture(np.zeros((16, 16, 3), depth), None, "PNG", meta)
        chunks, pos = [], 8
        while pos < len(data):
            size, kind = struct.unpack(">I4s", data[pos:pos + 8])
            chunks.append((kind, data[pos + 8:pos + 8 + size]))
            pos += 12 + size
        kinds = [k for k, _ in chunks]
        assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and notes == []
        assert kinds.index(b"iCCP") < kinds.index(b"IDAT") and kinds.index(b"pHYs") < kinds.index(b"IDAT")
        assert b"eXIf" in kinds
        ztxt = [body for kind, body in chunks if kind == b"zTXt" and body.startswith(b"Raw profile type iptc\0")]
        profile = decode_raw_profile(zlib.decompress(ztxt[0][len(b"Raw profile type iptc\0") + 1:]).decode())
        assert iptc_fields(photoshop_resources(profile)[0x0404])["by-line"] == ARTIST  # exiftool's 8BIM form
        im = Image.open(io.BytesIO(data))
        assert im.text["pixelmill:run_id"] == "r-17" and im.text["Comment"] == "Zoë's"
        assert read_picture(data).meta.text == {"Software": "a scanner", "Comment": "Zoë's"}


def test_jpeg_iptc_segment_follows_the_app_segments(corpus):
    data, _ = write_picture(np.zeros((8, 8, 3), np.uint8), None, "JPEG", source_meta(corpus))
    markers, pos = [], 2
    while data[pos + 1] != 0xDA:  # up to the start of scan
        markers.append(data[pos + 1])
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    apps = [m for m in markers if 0xE0 <= m <= 0xEF]
    assert apps[-1] == 0xED and sorted(apps[:-1]) == apps[:-1] and 0xE2 in apps
    assert markers.index(0xED) == len(apps) - 1  # before the quantisation tables, after APP0-APP2


def test_text_chunks_are_noted_where_a_format_has_none():
    meta = Metadata(text={"Comment": "a scan"})
    for fmt in ("JPEG", "WEBP", "TIFF"):
        _, notes = write_picture(np.zeros((8, 8), np.uint8), None, fmt, meta)
        assert notes == [f"{fmt} has no PNG text chunks: text not kept"]


def test_large_tiff_is_tiled_and_carries_a_readable_exif_ifd(corpus):
    meta = for_output(source_meta(corpus), 1100, 40, 1)
    data, notes = write_picture(np.zeros((40, 1100, 3), np.uint16), None, "TIFF", meta)
    assert notes == []
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        exif = page.tags["ExifTag"].value  # tifffile, an independent reader, finds the appended ExifIFD
        assert exif["DateTimeOriginal"] == DATETIME and exif["PixelXDimension"] == 1100
    small, _ = write_picture(np.zeros((40, 100), np.uint8), None, "TIFF", meta)
    with tifffile.TiffFile(io.BytesIO(small)) as tif:
        assert not tif.pages.first.is_tiled


def test_write_rejects_what_it_cannot_encode():
    grey = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="cannot write"):
        write_picture(grey, None, "BMP", Metadata())
    with pytest.raises(ValueError, match="uint8/uint16"):
        write_picture(grey.astype(np.float32), None, "PNG", Metadata())
    with pytest.raises(ValueError, match="does not match"):
        write_picture(grey, np.zeros((4, 4), np.uint16), "PNG", Metadata())


def test_no_metadata_writes_none():
    for fmt in WRITE_FORMATS:
        data, notes = write_picture(np.zeros((8, 8, 3), np.uint8), None, fmt, Metadata())
        meta = read_picture(data).meta
        assert (meta.xmp, meta.iptc, meta.icc, notes, provenance_of(data)) == (None, None, None, [], {}), fmt


def test_a_profile_of_the_wrong_colour_space_is_dropped(corpus):
    grey_icc = bytes(16) + b"GRAY" + bytes(108)  # only the header's colour space is looked at
    meta = Metadata(icc=grey_icc)
    data, notes = write_picture(np.zeros((8, 8, 3), np.uint8), None, "PNG", meta)  # a colourised grey scan
    assert notes == ["ICC profile dropped: a GRAY profile does not fit RGB pixels"]
    assert read_picture(data).meta.icc is None
    _, notes = write_picture(np.zeros((8, 8), np.uint8), None, "WEBP", meta)  # WebP stores grey as RGB
    assert notes == ["ICC profile dropped: a GRAY profile does not fit RGB pixels"]
    data, notes = write_picture(np.zeros((8, 8), np.uint8), None, "TIFF", meta)
    assert notes == [] and read_picture(data).meta.icc == grey_icc


def test_jpeg_blocks_over_one_segment_are_noted_not_fatal():
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.MakerNote] = bytes(70_000)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b" " * 70_000 + b"</x:xmpmeta>"
    iptc = b"\x1c\x02\x78\x80\x04" + struct.pack(">I", 70_000) + bytes(70_000)
    data, notes = write_picture(np.zeros((8, 8, 3), np.uint8), None, "JPEG",
                                Metadata(exif=exif.tobytes(), xmp=xmp, iptc=iptc))
    assert notes == ["JPEG: EXIF over 64 KB: EXIF not kept", "JPEG: XMP over 64 KB: XMP not kept",
                     "JPEG: IPTC over 64 KB: IPTC not kept"]
    assert read_picture(data).size == (8, 8)
