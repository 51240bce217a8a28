"""An archive-like corpus for the fidelity tests: small, deterministic pictures carrying what real archives carry
(rotated JPEGs with EXIF/XMP/IPTC/ICC, wide-gamut and CMYK profiles, 16-bit PNG and TIFF, soft alpha, HEIC,
AVIF, two files that collide by name).

`make_corpus(folder)` writes the files and returns, for each relative name, the facts a test checks. The files
are built here without pixelmill's own writers (16-bit PNG by hand, IPTC and the ICC profiles byte by byte),
so a bug in tasks/core/imageio.py cannot hide behind the same bug in its input.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pillow_heif
import tifffile
from PIL import Image, ImageCms, PngImagePlugin

D50 = (0.9642, 1.0, 0.8249)
# Adobe RGB (1998)'s colorants adapted to D50, as in Adobe's own profile; its gamma is 563/256
ADOBE_RGB_D50 = ((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))
ADOBE_GAMMA = 563 / 256
# linear sRGB -> XYZ, Bradford-adapted to D50 (the ICC connection space)
SRGB_TO_XYZ_D50 = np.array([[0.4360747, 0.3850649, 0.1430804],
                            [0.2225045, 0.7168786, 0.0606169],
                            [0.0139322, 0.0971045, 0.7141733]])

ARTIST = "Zoë Ångström"  # not ASCII: EXIF strings must survive as the UTF-8 they were written in
COPYRIGHT = "(c) 1987 Example Archive"
DESCRIPTION = "Harbour at dusk"
DATETIME = "1987:06:05 04:03:02"
TITLE = "Harbour at dusk, scan 12"
CAPTION = "Fishing boats in the harbour"


# ------------------------------------------------------------------ pixels


def scene(w: int, h: int, seed: int) -> np.ndarray:
    """(h, w, 3) floats in 0..1: smooth gradients, a fine texture and a little noise, like a photograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    texture = 0.08 * np.sin(x / 2.3 + seed) * np.cos(y / 3.1)
    base = np.stack([0.15 + 0.7 * x / w, 0.2 + 0.6 * y / h, 0.5 + 0.3 * np.sin((x + y) / (w + h) * np.pi)], axis=-1)
    return np.clip(base + texture[..., None] + rng.normal(0, 0.02, base.shape), 0, 1)


def to8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)


def to16(a: np.ndarray) -> np.ndarray:
    """16-bit values none of which is a multiple of 257: cut to 8 bits, every one of them would change."""
    v = np.clip(np.rint(a * 65000) + 100, 0, 65534).astype(np.uint16)
    return np.where(v % 257 == 0, v + 1, v).astype(np.uint16)


def soft_disc(w: int, h: int, edge: float = 10.0) -> np.ndarray:
    """(h, w) alpha in 0..1: an opaque ellipse whose border fades out over `edge` pixels."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot((x - w / 2) / (w * 0.32), (y - h / 2) / (h * 0.32))  # 1 on the ellipse
    return np.clip((1 - r) * min(w, h) * 0.32 / edge + 0.5, 0, 1)


# ------------------------------------------------------------------ ICC profiles, byte by byte


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz_tag(xyz) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in xyz)


def _desc_tag(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + b"\0" * 8 + b"\0\0\0" + b"\0" * 67


def _icc(device_class: bytes, space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    """An ICC v2.1 profile: header, tag table, tag data (each on a 4-byte boundary)."""
    table_size = 4 + 12 * len(tags)
    offset, entries, body = 128 + table_size, b"", b""
    for signature, data in tags:
        entries += signature + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    size = 128 + table_size + len(body)
    header = (struct.pack(">I", size) + b"\0\0\0\0" + struct.pack(">I", 0x02100000) + device_class + space + pcs
              + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
              + b"".join(_s15(v) for v in D50) + b"pxml" + b"\0" * 44)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + entries + body


def matrix_profile(primaries_xyz, gamma: float, description: str = "Adobe RGB (1998)-like, pixelmill test") -> bytes:
    """An RGB display profile of the matrix/TRC kind: three D50-adapted colorants and one gamma curve."""
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [(b"desc", _desc_tag(description)), (b"cprt", b"text\0\0\0\0No copyright, test data\0"),
            (b"wtpt", _xyz_tag(D50)), (b"rXYZ", _xyz_tag(primaries_xyz[0])), (b"gXYZ", _xyz_tag(primaries_xyz[1])),
            (b"bXYZ", _xyz_tag(primaries_xyz[2])), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    return _icc(b"mntr", b"RGB ", b"XYZ ", tags)


def grey_profile(gamma: float = 2.2, description: str = "Gray gamma 2.2, pixelmill test") -> bytes:
    """A greyscale display profile: one gamma curve (kTRC)."""
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [(b"desc", _desc_tag(description)), (b"cprt", b"text\0\0\0\0No copyright, test data\0"),
            (b"wtpt", _xyz_tag(D50)), (b"kTRC", curve)]
    return _icc(b"mntr", b"GRAY", b"XYZ ", tags)


def _srgb_decode(v):
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _srgb_encode(v):
    v = np.clip(v, 0, 1)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


def _lab(xyz):
    t = xyz / np.array(D50)
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _xyz(lab):
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    t = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29))
    return t * np.array(D50)


def naive_cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """0..1 CMYK to 0..1 sRGB, the way the test profile defines it: each ink multiplies its complement down."""
    return (1 - cmyk[..., :3]) * (1 - cmyk[..., 3:4])


def _rgb_to_cmyk(rgb: np.ndarray) -> np.ndarray:
    k = 1 - rgb.max(axis=-1, keepdims=True)
    cmy = np.where(k < 1, (1 - rgb - k) / np.maximum(1 - k, 1e-9), 0)
    return np.concatenate([cmy, k], -1)


def _mft2(grid_in: np.ndarray, points: int, inputs: int, outputs: int) -> bytes:
    """lut16Type: identity matrix and curves around a CLUT of `points`^inputs entries (first input slowest)."""
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    curves = struct.pack(">HH", 0, 65535)
    clut = np.clip(np.rint(grid_in), 0, 65535).astype(">u2").tobytes()
    return (b"mft2\0\0\0\0" + bytes([inputs, outputs, points, 0]) + identity + struct.pack(">HH", 2, 2)
            + curves * inputs + clut + curves * outputs)


def _lab_v2(lab: np.ndarray) -> np.ndarray:
    """Lab to the 16-bit ICC v2 (lut16) encoding: L 0..100 -> 0..0xFF00, a/b -128..127.996 -> 0..0xFFFF."""
    return np.stack([lab[..., 0] * 652.80, (lab[..., 1] + 128) * 256, (lab[..., 2] + 128) * 256], -1)


def cmyk_profile() -> bytes:
    """A CMYK output profile (Lab connection space) for the naive ink model of `naive_cmyk_to_rgb` seen in sRGB:
    A2B0 (CMYK -> Lab, a 5^4 grid) and B2A0 (Lab -> CMYK, a 9^3 grid, grey component replaced by black)."""
    axis = np.linspace(0, 1, 5)
    cmyk = np.stack(np.meshgrid(axis, axis, axis, axis, indexing="ij"), -1).reshape(-1, 4)
    lab = _lab(_srgb_decode(naive_cmyk_to_rgb(cmyk)) @ SRGB_TO_XYZ_D50.T)
    a2b = _mft2(_lab_v2(lab), 5, 4, 3)
    axis = np.linspace(0, 65535, 9)
    enc = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    lab = np.stack([enc[:, 0] / 652.80, enc[:, 1] / 256 - 128, enc[:, 2] / 256 - 128], -1)
    rgb = _srgb_encode(np.clip(_xyz(lab) @ np.linalg.inv(SRGB_TO_XYZ_D50).T, 0, 1))
    b2a = _mft2(_rgb_to_cmyk(rgb) * 65535, 9, 3, 4)
    tags = [(b"desc", _desc_tag("Naive CMYK, pixelmill test")), (b"cprt", b"text\0\0\0\0No copyright, test data\0"),
            (b"wtpt", _xyz_tag(D50)), (b"A2B0", a2b), (b"B2A0", b2a)]
    return _icc(b"prtr", b"CMYK", b"Lab ", tags)


@functools.cache
def srgb_profile() -> bytes:
    """One sRGB profile per process: LittleCMS writes the creation time into its header, so profiles made a
    second apart differ (a corpus made at 17:59:04 and a check at 17:59:05 once failed CI)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# ------------------------------------------------------------------ metadata blocks, byte by byte


def xmp_packet(title: str, rights: str | None = None, creator: str | None = None, orientation: int | None = None,
               pixel_x: int | None = None) -> bytes:
    """An XMP packet as Adobe tools write it: tiff:Orientation as an attribute, the rest as elements."""
    attrs = f' tiff:Orientation="{orientation}"' if orientation else ""
    props = f'<dc:title><rdf:Alt><rdf:li xml:lang="x-default">{title}</rdf:li></rdf:Alt></dc:title>'
    if rights:
        props += f'<dc:rights><rdf:Alt><rdf:li xml:lang="x-default">{rights}</rdf:li></rdf:Alt></dc:rights>'
    if creator:
        props += f"<dc:creator><rdf:Seq><rdf:li>{creator}</rdf:li></rdf:Seq></dc:creator>"
    if pixel_x:
        props += f"<exif:PixelXDimension>{pixel_x}</exif:PixelXDimension>"
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
            ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
            '  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"'
            ' xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/"'
            f"{attrs}>{props}</rdf:Description>\n"
            " </rdf:RDF>\n</x:xmpmeta>\n" + " " * 200 + '\n<?xpacket end="w"?>').encode("utf-8")


def iptc_iim(byline: str, caption: str, copyright: str) -> bytes:
    """IPTC-IIM: record 1's coded character set (UTF-8), record 2's version, by-line, caption, copyright."""
    def dataset(record: int, number: int, value: bytes) -> bytes:
        return bytes([0x1C, record, number]) + struct.pack(">H", len(value)) + value

    return (dataset(1, 90, b"\x1b%G") + dataset(2, 0, b"\x00\x04") + dataset(2, 80, byline.encode())
            + dataset(2, 120, caption.encode()) + dataset(2, 116, copyright.encode()))


def app13(iptc: bytes) -> bytes:
    """A JPEG APP13 segment: "Photoshop 3.0", one 8BIM resource 0x0404 (empty name) holding the IPTC."""
    resource = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(iptc)) + iptc + b"\0" * (len(iptc) % 2)
    body = b"Photoshop 3.0\0" + resource
    return b"\xff\xed" + struct.pack(">H", len(body) + 2) + body


def splice_after_app_segments(jpeg: bytes, segment: bytes) -> bytes:
    pos = 2
    while jpeg[pos + 1] in (0xE0, 0xE1, 0xE2):
        pos += 2 + struct.unpack(">H", jpeg[pos + 2:pos + 4])[0]
    return jpeg[:pos] + segment + jpeg[pos:]


def camera_exif(orientation: int, stored_w: int, stored_h: int, dpi: int = 300, artist: str = ARTIST) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x013B] = artist.encode("utf-8")  # bytes: Pillow would write a str as ASCII with '?' for the rest
    exif[0x8298] = COPYRIGHT
    exif[0x010E] = DESCRIPTION
    exif[0x0132] = DATETIME
    exif[0x010F], exif[0x0110] = "Pixelmill", "Test Camera 1"
    exif[0x011A] = exif[0x011B] = dpi
    exif[0x0128] = 2
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = DATETIME
    sub[0xA001] = 1  # sRGB
    sub[0xA002], sub[0xA003] = stored_w, stored_h
    return exif


def with_thumbnail(exif: bytes, thumbnail: bytes) -> bytes:
    """Append IFD1 (a JPEG thumbnail, as cameras write one) to an "Exif\\0\\0" block Pillow made (big-endian)."""
    tiff = bytearray(exif[6:])
    assert tiff[:2] == b"MM"
    ifd0 = struct.unpack_from(">I", tiff, 4)[0]
    count = struct.unpack_from(">H", tiff, ifd0)[0]
    next_at = ifd0 + 2 + 12 * count
    tiff += b"\0" * (len(tiff) % 2)
    ifd1 = len(tiff)
    data_at = ifd1 + 2 + 12 * 3 + 4
    tiff += struct.pack(">H", 3)
    tiff += struct.pack(">HHII", 0x0103, 3, 1, 6 << 16)  # Compression: JPEG (a SHORT, left-justified)
    tiff += struct.pack(">HHII", 0x0201, 4, 1, data_at)  # JPEGInterchangeFormat
    tiff += struct.pack(">HHII", 0x0202, 4, 1, len(thumbnail))  # JPEGInterchangeFormatLength
    tiff += b"\0\0\0\0" + thumbnail
    struct.pack_into(">I", tiff, next_at, ifd1)
    return b"Exif\0\0" + bytes(tiff)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png16(arr: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """A 16-bit PNG written by hand (filter 0 on every row), independent of libpng and imagecodecs."""
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = arr.reshape(h, w * channels).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    chunks = [png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))]
    chunks += [png_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1")) for k, v in (text or {}).items()]
    chunks += [png_chunk(b"IDAT", zlib.compress(raw)), png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _save(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


# ------------------------------------------------------------------ the corpus


def make_corpus(folder: Path) -> dict[str, dict]:
    """Write the corpus under `folder`; for each relative name, the facts tests check:
    format, width/height (upright), depth, mode (stored), has_alpha, orientation, dpi, icc (bool), thumbnail
    (an EXIF thumbnail), exif (exif_fields), xmp (xmp_fields: dc:title ...), iptc (iptc_fields: by-line ...),
    text (PNG text), lossless, pixels/alpha (the upright arrays the file was made from: exact for lossless
    files, close for lossy ones; CMYK: the RGB its inks mean)."""
    folder = Path(folder)
    files: dict[str, tuple[bytes, dict]] = {}
    pillow_heif.register_heif_opener()

    def add(name: str, data: bytes, **facts) -> None:
        defaults = {"depth": 8, "has_alpha": False, "orientation": 1, "dpi": None, "icc": False, "exif": {},
                    "xmp": {}, "iptc": {}, "text": {}, "alpha": None, "lossless": False, "thumbnail": False}
        files[name] = (data, defaults | facts)

    # A camera JPEG, stored on its side (Orientation 6), carrying every block an archive photo has.
    upright = to8(scene(120, 160, seed=1))
    stored = np.rot90(upright, 1)  # orientation 6: turn the stored pixels 90 degrees clockwise to see them
    thumb = _save(Image.fromarray(stored).resize((40, 30)), "JPEG", quality=70)
    exif = with_thumbnail(camera_exif(6, 160, 120).tobytes(), thumb)
    xmp = xmp_packet(TITLE, COPYRIGHT, ARTIST, orientation=6, pixel_x=160)
    jpeg = _save(Image.fromarray(stored), "JPEG", quality=92, exif=exif, xmp=xmp, icc_profile=srgb_profile(),
                 dpi=(300, 300))
    jpeg = splice_after_app_segments(jpeg, app13(iptc_iim(ARTIST, CAPTION, COPYRIGHT)))
    add("photo.jpg", jpeg, format="JPEG", width=120, height=160, mode="RGB", orientation=6, dpi=(300.0, 300.0),
        icc=True, pixels=upright, thumbnail=True,
        exif={"Artist": ARTIST, "Copyright": COPYRIGHT, "ImageDescription": DESCRIPTION, "DateTime": DATETIME,
              "DateTimeOriginal": DATETIME, "Orientation": 6, "PixelXDimension": 160, "PixelYDimension": 120,
              "XResolution": 300.0, "YResolution": 300.0, "Make": "Pixelmill", "Model": "Test Camera 1"},
        xmp={"dc:title": TITLE, "dc:rights": COPYRIGHT, "dc:creator": ARTIST, "tiff:Orientation": "6",
             "exif:PixelXDimension": "160"},
        iptc={"by-line": ARTIST, "caption": CAPTION, "copyright": COPYRIGHT})

    # A wide-gamut scan: Adobe RGB (1998)-like matrix profile, XMP title, 300 dpi.
    pixels = to8(scene(160, 120, seed=2))
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp_packet("Wide gamut scan").decode("utf-8"))
    info.add_text("Software", "pixelmill corpus")
    add("widegamut.png", _save(Image.fromarray(pixels), "PNG", icc_profile=matrix_profile(ADOBE_RGB_D50, ADOBE_GAMMA),
                                pnginfo=info, dpi=(300, 300)),
        format="PNG", width=160, height=120, mode="RGB", dpi=(300.0, 300.0), icc=True, pixels=pixels, lossless=True,
        xmp={"dc:title": "Wide gamut scan"}, text={"Software": "pixelmill corpus"})

    # 16-bit grey and colour, PNG and TIFF: values that 8 bits cannot hold.
    grey = to16(scene(96, 80, seed=3).mean(axis=-1))
    add("grey16.png", _save(Image.fromarray(grey), "PNG"), format="PNG", width=96, height=80, depth=16,
        mode="I;16", pixels=grey, lossless=True)
    grey_t = to16(scene(80, 64, seed=4).mean(axis=-1))
    buf = io.BytesIO()
    tifffile.imwrite(buf, grey_t, photometric="minisblack", compression="zlib", metadata=None, resolution=(600, 600),
                     resolutionunit="INCH")
    add("grey16.tif", buf.getvalue(), format="TIFF", width=80, height=64, depth=16, mode="I;16", pixels=grey_t,
        dpi=(600.0, 600.0), lossless=True)
    rgb = to16(scene(96, 72, seed=5))
    add("rgb16.png", png16(rgb, {"Comment": "sixteen bits per channel"}), format="PNG", width=96, height=72, depth=16,
        mode="RGB;16", pixels=rgb, lossless=True, text={"Comment": "sixteen bits per channel"})
    rgb_t = to16(scene(112, 80, seed=6))
    buf = io.BytesIO()  # stored on its side: Orientation 8, turn 90 degrees counter-clockwise to see it
    tifffile.imwrite(buf, np.ascontiguousarray(np.rot90(rgb_t, -1)), photometric="rgb", compression="zlib",
                     metadata=None, extratags=[(274, "H", 1, 8, True), (315, "s", 0, "Scanner Operator", True)])
    add("rgb16.tif", buf.getvalue(), format="TIFF", width=112, height=80, depth=16, mode="RGB;16", orientation=8,
        pixels=rgb_t, lossless=True, exif={"Artist": "Scanner Operator", "Orientation": 8})
    rgba = np.dstack([to16(scene(64, 64, seed=7)), to16(soft_disc(64, 64))])
    rgba[..., :3][rgba[..., 3] < 200] = 0  # the transparent part black, as a cut-out's is
    add("rgba16.png", png16(rgba), format="PNG", width=64, height=64, depth=16, mode="RGBA;16", has_alpha=True,
        pixels=rgba[..., :3], alpha=rgba[..., 3], lossless=True)

    # A cut-out: an opaque coloured shape whose edge fades out; fully transparent pixels are black.
    alpha = to8(soft_disc(128, 96))
    colour = to8(scene(128, 96, seed=8))
    colour[alpha == 0] = 0
    add("soft_alpha.png", _save(Image.fromarray(np.dstack([colour, alpha])), "PNG"), format="PNG", width=128,
        height=96, mode="RGBA", has_alpha=True, pixels=colour, alpha=alpha, lossless=True)

    # A CMYK JPEG from a prepress archive, with its CMYK profile (Pillow writes Adobe's inverted CMYK).
    ink = _rgb_to_cmyk(scene(96, 64, seed=9))
    cmyk = _save(Image.fromarray(to8(ink), "CMYK"), "JPEG", quality=95, icc_profile=cmyk_profile())
    add("cmyk.jpg", cmyk, format="JPEG", width=96, height=64, mode="CMYK", icc=True,
        pixels=to8(naive_cmyk_to_rgb(to8(ink) / 255.0)))

    # A phone's HEIC and a web AVIF, both with EXIF. Pillow's AVIF writer re-serialises the EXIF as ASCII
    # ('?' for the rest), so the AVIF's artist is plain ASCII.
    for name, fmt, seed, artist in (("photo.heic", "HEIF", 10, ARTIST), ("photo.avif", "AVIF", 11, "Zoe Angstrom")):
        pixels = to8(scene(96, 64, seed=seed))
        exif = camera_exif(1, 96, 64, dpi=72, artist=artist)
        add(name, _save(Image.fromarray(pixels), fmt, quality=90, exif=exif.tobytes()), format=fmt, width=96,
            height=64, mode="RGB", pixels=pixels, dpi=(72.0, 72.0),
            exif={"Artist": artist, "Copyright": COPYRIGHT, "DateTime": DATETIME, "DateTimeOriginal": DATETIME})

    # Two inputs whose outputs would collide by name.
    a_jpg, a_tif = to8(scene(64, 48, seed=12)), to8(scene(64, 48, seed=13))
    add("dup/a.jpg", _save(Image.fromarray(a_jpg), "JPEG", quality=92), format="JPEG", width=64, height=48,
        mode="RGB", pixels=a_jpg)
    add("dup/a.tif", _save(Image.fromarray(a_tif), "TIFF", compression="tiff_adobe_deflate"), format="TIFF",
        width=64, height=48, mode="RGB", pixels=a_tif, lossless=True)

    for name, (data, _) in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {name: facts for name, (_, facts) in files.items()}
