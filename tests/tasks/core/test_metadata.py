from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import ExifTags, Image, PngImagePlugin

from pixelmill.tasks.core.images import open_image  # noqa: F401  (registers the HEIF opener)
from pixelmill.tasks.core.metadata import (
    PIXELMILL_NS,
    Metadata,
    decode_raw_profile,
    exif_fields,
    for_output,
    iptc_block,
    iptc_fields,
    load_exif,
    provenance_of,
    raw_profile,
    read_metadata,
    xmp_fields,
)
from tests.corpus import (
    ARTIST,
    CAPTION,
    COPYRIGHT,
    DATETIME,
    DESCRIPTION,
    TITLE,
    app13,
    iptc_iim,
    make_corpus,
    png_chunk,
    splice_after_app_segments,
    srgb_profile,
    xmp_packet,
)

PROVENANCE = {"model_version": "unet-x2@3", "weights_sha256": "f" * 64, "input_sha256": "a" * 64, "run_id": "r-17"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return folder, make_corpus(folder)


def meta_of(data: bytes) -> Metadata:
    return read_metadata(Image.open(io.BytesIO(data)), data)


def save(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def small() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8))


def test_every_corpus_file_gives_the_metadata_it_was_made_with(corpus):
    folder, facts = corpus
    for name, fact in facts.items():
        meta = meta_of((folder / name).read_bytes())
        fields = exif_fields(meta.exif)
        assert {k: fields.get(k) for k in fact["exif"]} == fact["exif"], name
        xmp = xmp_fields(meta.xmp)
        assert {k: xmp.get(k) for k in fact["xmp"]} == fact["xmp"], name
        assert iptc_fields(meta.iptc) == fact["iptc"], name
        assert (meta.icc is not None) == fact["icc"], name
        assert meta.dpi == fact["dpi"], name
        assert meta.text == fact["text"], name


def test_the_camera_jpeg_in_detail(corpus):
    folder, _ = corpus
    meta = meta_of((folder / "photo.jpg").read_bytes())
    assert meta.exif.startswith(b"Exif\0\0")
    assert meta.icc == srgb_profile()
    assert meta.iptc == iptc_iim(ARTIST, CAPTION, COPYRIGHT)  # the bare IIM, without the 8BIM wrapper
    assert b"<x:xmpmeta" in meta.xmp
    assert load_exif(meta.exif).get_ifd(ExifTags.IFD.IFD1)  # the camera's thumbnail is there to be dropped
    assert not meta.adobe_rgb


def test_for_output_makes_the_metadata_of_an_upright_larger_picture(corpus):
    folder, _ = corpus
    meta = meta_of((folder / "photo.jpg").read_bytes())
    out = for_output(meta, 240, 320, 2, PROVENANCE)
    fields = exif_fields(out.exif)
    assert fields["Orientation"] == 1
    assert (fields["PixelXDimension"], fields["PixelYDimension"]) == (240, 320)
    assert (fields["XResolution"], fields["YResolution"]) == (600.0, 600.0)  # same print size at twice the pixels
    assert out.dpi == (600.0, 600.0)
    for key in ("Artist", "Copyright", "ImageDescription", "DateTime", "DateTimeOriginal", "Make", "Model"):
        assert fields[key] == exif_fields(meta.exif)[key]
    assert fields["Artist"] == ARTIST and fields["ImageDescription"] == DESCRIPTION
    assert load_exif(out.exif).get_ifd(ExifTags.IFD.IFD1) == {}  # the thumbnail shows the old pixels: gone
    xmp = xmp_fields(out.xmp)
    assert xmp["tiff:Orientation"] == "1" and xmp["exif:PixelXDimension"] == "240"
    assert xmp["dc:title"] == TITLE and xmp["dc:rights"] == COPYRIGHT and xmp["dc:creator"] == ARTIST
    assert {k: xmp[f"pixelmill:{k}"] for k in PROVENANCE} == PROVENANCE
    assert out.icc == meta.icc and out.iptc == meta.iptc and out.text == meta.text
    assert meta.dpi == (300.0, 300.0)  # the input's own metadata is untouched (frozen)


def test_provenance_makes_a_packet_when_there_is_none_and_replaces_an_older_one():
    out = for_output(Metadata(), 10, 10, 1, {"run_id": "first"})
    assert xmp_fields(out.xmp) == {"pixelmill:run_id": "first"}
    assert PIXELMILL_NS.encode() in out.xmp
    again = for_output(out, 20, 20, 2, {"run_id": "second", "model_version": "m@2"})
    assert xmp_fields(again.xmp) == {"pixelmill:run_id": "second", "pixelmill:model_version": "m@2"}
    assert again.xmp.count(b"pixelmill:run_id>") == 2  # one element: its opening and closing tags
    assert for_output(Metadata(), 10, 10, 1).xmp is None
    not_xmp = for_output(Metadata(xmp=b"<root/>"), 10, 10, 1, {"run_id": "third"})  # XML, but no rdf:RDF
    assert xmp_fields(not_xmp.xmp) == {"pixelmill:run_id": "third"}


def test_provenance_keys_must_be_xml_names():
    with pytest.raises(ValueError, match="not an XML name"):
        for_output(Metadata(), 10, 10, 1, {"has space": "x"})


def test_unparseable_xmp_is_dropped_not_carried():
    im = small()
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta><unclosed>")
    meta = meta_of(save(im, "PNG", pnginfo=info))
    assert meta.xmp is None
    assert xmp_fields(b"<broken") == {}


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_and_iptc_blocks_are_skipped_not_raised():
    jpeg = save(small(), "JPEG")
    bad_exif = b"\xff\xe1" + struct.pack(">H", 2 + 14) + b"Exif\0\0MM\0*\0\0\xff\xff"  # IFD0 past the end
    bad_iptc = app13(b"\x1c\x02\x50\xff\xff" + b"short")  # a dataset longer than the block
    data = splice_after_app_segments(jpeg, bad_exif + bad_iptc)
    meta = meta_of(data)
    assert meta.exif is None and meta.iptc is None
    assert for_output(meta, 32, 24, 1).exif is None


def test_xmp_dimensions_and_resolution_in_attribute_form_are_updated():
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description rdf:about="" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
           b'xmlns:exif="http://ns.adobe.com/exif/1.0/" tiff:Orientation="8" tiff:XResolution="300/1" '
           b'exif:PixelYDimension="100"/></rdf:RDF></x:xmpmeta>')
    out = for_output(Metadata(xmp=xmp), 400, 300, 3).xmp
    assert xmp_fields(out)["tiff:Orientation"] == "1"
    assert xmp_fields(out)["exif:PixelYDimension"] == "300"
    assert b'tiff:XResolution="900/1"' in out


def test_adobe_rgb_is_the_dcf_rule():
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.ColorSpace] = 0xFFFF
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.IFD.Interop] = {ExifTags.Base.InteropIndex: "R03"}
    assert Metadata(exif=exif.tobytes()).adobe_rgb
    assert not Metadata(exif=exif.tobytes(), icc=srgb_profile()).adobe_rgb  # a profile says more than EXIF
    srgb = Image.Exif()
    srgb.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.ColorSpace] = 1
    assert not Metadata(exif=srgb.tobytes()).adobe_rgb
    assert not Metadata().adobe_rgb


def test_png_raw_profiles_as_imagemagick_writes_them():
    iptc = iptc_iim("A. Person", "A caption", "(c) someone")
    exif = Image.Exif()
    exif[ExifTags.Base.Artist] = "Raw Profile Artist"
    for payload in (iptc, b"8BIM\x04\x04\0\0" + struct.pack(">I", len(iptc)) + iptc + b"\0" * (len(iptc) % 2)):
        info = PngImagePlugin.PngInfo()
        info.add_text("Raw profile type iptc", raw_profile("iptc", payload), zip=True)
        info.add_text("Raw profile type exif", raw_profile("exif", exif.tobytes()), zip=True)
        meta = meta_of(save(small(), "PNG", pnginfo=info))
        assert iptc_fields(meta.iptc) == {"by-line": "A. Person", "caption": "A caption", "copyright": "(c) someone"}
        assert exif_fields(meta.exif)["Artist"] == "Raw Profile Artist"
        assert meta.text == {}  # raw profiles are metadata blocks, not text


def test_raw_profile_format_is_exiftools():
    text = raw_profile("iptc", bytes(range(40)))
    assert text.startswith("\niptc\n      40\n")  # "\n%s\n%8d\n", then hex
    assert all(len(line) <= 72 for line in text.split("\n"))
    assert decode_raw_profile(text) == bytes(range(40))
    assert decode_raw_profile("\nIPTC profile\n       3\n0a0b0c\n") == b"\n\x0b\x0c"


def test_tiff_iptc_written_as_long_is_read():
    iptc = iptc_iim("Long Writer", "c", "r")
    iptc += b"\0" * (-len(iptc) % 4)
    longs = struct.unpack(f"<{len(iptc) // 4}I", iptc)
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((8, 8), np.uint8), metadata=None, extratags=[(33723, "I", len(longs), longs, True)])
    assert iptc_fields(meta_of(buf.getvalue()).iptc)["by-line"] == "Long Writer"


def test_iptc_fields():
    block = iptc_block({"by-line": "Ann", "keywords": ["boats", "harbour"], "caption": "Zoë's"})
    assert iptc_fields(block) == {"by-line": "Ann", "keywords": "boats, harbour", "caption": "Zoë's"}
    extended = b"\x1c\x02\x78\x80\x04" + struct.pack(">I", 3) + b"big"  # the extended-length form
    assert iptc_fields(extended) == {"caption": "big"}
    assert iptc_fields(b"\x00garbage") == {}
    assert iptc_fields(None) == {}


def test_dpi_precision_and_placeholders():
    assert meta_of(save(small(), "PNG", dpi=(72, 72))).dpi == (72.0, 72.0)  # pHYs holds 2835 px/m = 72.009 dpi
    assert meta_of(save(small(), "PNG")).dpi is None
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((8, 8), np.uint8), metadata=None, resolution=(1, 1), resolutionunit="INCH")
    assert meta_of(buf.getvalue()).dpi is None  # 1 x 1 is what writers put for "unknown"
    exif = Image.Exif()
    exif[ExifTags.Base.XResolution] = exif[ExifTags.Base.YResolution] = 100
    exif[ExifTags.Base.ResolutionUnit] = 3  # per centimetre
    assert meta_of(save(small(), "WEBP", exif=exif.tobytes())).dpi == (254.0, 254.0)


def test_png_text_is_kept_apart_from_blocks_and_provenance():
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "A title")
    info.add_itxt("Description", "Zoë's harbour")
    info.add_text("pixelmill:run_id", "old")
    info.add_itxt("XML:com.adobe.xmp", xmp_packet("t").decode())
    meta = meta_of(save(small(), "PNG", pnginfo=info))
    assert meta.text == {"Title": "A title", "Description": "Zoë's harbour"}


def test_provenance_of_reads_xmp_then_png_text():
    assert provenance_of(b"not an image") == {}
    assert provenance_of(save(small(), "PNG")) == {}
    xmp = for_output(Metadata(), 32, 24, 1, PROVENANCE).xmp
    assert provenance_of(save(small(), "JPEG", xmp=xmp)) == PROVENANCE
    png = save(small(), "PNG")
    text_only = png[:33] + png_chunk(b"tEXt", b"pixelmill:run_id\0r-9") + png[33:]
    assert provenance_of(text_only) == {"run_id": "r-9"}


def test_exif_fields_reads_utf8_strings_and_rationals():
    exif = Image.Exif()
    exif[ExifTags.Base.Artist] = "Zoë".encode()
    exif[ExifTags.Base.XResolution] = 72
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = DATETIME
    assert exif_fields(exif.tobytes()) == {"Artist": "Zoë", "XResolution": 72.0, "DateTimeOriginal": DATETIME}
    assert exif_fields(None) == {} and exif_fields(b"Exif\0\0garbage") == {}


def test_heic_and_avif_exif(corpus):
    folder, facts = corpus
    for name in ("photo.heic", "photo.avif"):
        fields = exif_fields(meta_of((folder / name).read_bytes()).exif)
        assert fields["Artist"] == facts[name]["exif"]["Artist"] and fields["Copyright"] == COPYRIGHT


def test_zlib_compressed_xmp_in_itxt_is_read():
    packet = xmp_packet("Compressed title")
    body = b"XML:com.adobe.xmp\0\x01\x00\0\0" + zlib.compress(packet)
    png = save(small(), "PNG")
    data = png[:33] + png_chunk(b"iTXt", body) + png[33:]
    assert xmp_fields(meta_of(data).xmp)["dc:title"] == "Compressed title"


def test_png_text_after_the_image_data_is_read_and_bombs_are_skipped():
    png = save(small(), "PNG")
    iend = png.rindex(b"IEND") - 4
    bomb = png_chunk(b"zTXt", b"Bomb\0\0" + zlib.compress(b"\0" * (64 << 20)))
    late = png_chunk(b"tEXt", b"Late\0after IDAT") + bomb + png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp_packet("Late title"))
    meta = meta_of(png[:iend] + late + png[iend:])
    assert meta.text == {"Late": "after IDAT"}
    assert xmp_fields(meta.xmp)["dc:title"] == "Late title"


def test_the_corpus_profiles_are_valid_icc():
    from PIL import ImageCms

    from tests.corpus import ADOBE_GAMMA, ADOBE_RGB_D50, cmyk_profile, grey_profile, matrix_profile

    srgb = ImageCms.createProfile("sRGB")
    for data, space, mode in ((matrix_profile(ADOBE_RGB_D50, ADOBE_GAMMA), "RGB", "RGB"),
                              (cmyk_profile(), "CMYK", "CMYK"), (grey_profile(), "GRAY", "L")):
        profile = ImageCms.ImageCmsProfile(io.BytesIO(data))
        assert profile.profile.xcolor_space.strip() == space
        ImageCms.buildTransform(profile, srgb, mode, "RGB")  # littlecms accepts it as a source
    adobe = ImageCms.ImageCmsProfile(io.BytesIO(matrix_profile(ADOBE_RGB_D50, ADOBE_GAMMA)))
    assert adobe.profile.red_colorant[0] == pytest.approx(ADOBE_RGB_D50[0], abs=1e-3)
    # sRGB's pure green sits well inside Adobe RGB's gamut (about 144, 255, 60 there): the wide gamut is real
    to_adobe = ImageCms.buildTransform(srgb, adobe, "RGB", "RGB")
    red, green, blue = ImageCms.applyTransform(Image.new("RGB", (1, 1), (0, 255, 0)), to_adobe).getpixel((0, 0))
    assert red > 100 and green > 240 and blue > 30
