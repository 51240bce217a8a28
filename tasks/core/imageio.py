"""Full-fidelity read and write of one picture: all of its bit depth, its alpha and its metadata.

images.py decodes to the 8-bit RGB a model eats; this module is what an archive's output is made of. Pillow
keeps only the high byte of 16-bit RGB(A) PNG and TIFF, so those are decoded with imagecodecs (libpng) and
tifffile; 16-bit PNG is encoded with imagecodecs and TIFF with tifffile. Everything else goes through Pillow.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, replace

import imagecodecs
import numpy as np
import tifffile
from PIL import Image, ImageCms
from PIL.TiffImagePlugin import ImageFileDirectory_v2

from pixelmill.tasks.core.images import DEFAULT_MAX_PIXELS, ImageError, ImageFacts, open_image
from pixelmill.tasks.core.metadata import (
    EXIF_HEADER,
    IFD,
    PHOTOSHOP_HEADER,
    RAW_PROFILE,
    XMP_KEYWORD,
    Base,
    Metadata,
    exif_with_dpi,
    keep_bytes,
    load_exif,
    photoshop_iptc,
    raw_profile,
    read_metadata,
    upright_exif,
    xmp_fields,
)

WRITE_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
TILE_ABOVE = 1024  # a TIFF with a side over this is written in 256 x 256 tiles, so readers can crop it cheaply
JPEG_SEGMENT = 65533  # the most bytes a JPEG marker segment holds after its length field


@dataclass
class Picture:
    pixels: np.ndarray  # (H, W) grey or (H, W, 3) colour, uint8 or uint16, upright, in the file's colour space
    alpha: np.ndarray | None  # (H, W), pixels' dtype, upright; None when the image has no transparency
    depth: int  # 8 or 16: bits per channel stored in the file
    mode: str  # Pillow's name of the stored mode, or "RGB;16" / "RGBA;16" / "LA;16" for 16-bit colour
    format: str  # Pillow's format name: JPEG, PNG, WEBP, TIFF, HEIF, AVIF, BMP, GIF
    meta: Metadata  # read_metadata of the file (icc None once CMYK was converted to sRGB)
    notes: list[str]  # what reading had to change, for a person

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[1], self.pixels.shape[0]


# ------------------------------------------------------------------ reading


def read_picture(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode at full depth, upright (EXIF orientation applied), alpha apart; ImageError for a bad file."""
    upright, facts = open_image(data, max_pixels)  # the checks and error kinds every reader in pixelmill uses
    with Image.open(io.BytesIO(data)) as stored:  # the header again, untransposed: metadata, 16-bit layout
        return _picture(upright, stored, data, facts)


def _picture(upright: Image.Image, stored: Image.Image, data: bytes, facts: ImageFacts) -> Picture:
    meta = read_metadata(stored, data)
    notes: list[str] = []
    try:
        full = _full_depth_colour(stored, data)
        if full is not None:
            pixels, alpha, mode = full
            orientation = _orientation(stored)
            pixels, alpha = orient(pixels, orientation), None if alpha is None else orient(alpha, orientation)
        else:
            pixels, alpha, meta = _from_pillow(upright, meta, notes)
            mode = facts.mode
    except ImageError:
        raise
    except Exception as exc:  # an odd mode or layout no decoder here handles
        raise ImageError("unsupported", f"cannot convert mode {facts.mode} ({type(exc).__name__}: {exc})") from None
    bits = stored.info.get("bit_depth", 8)  # HEIF: pillow-heif hands over 10/12-bit pictures at 8 bits
    if isinstance(bits, int) and bits > 8 and pixels.dtype == np.uint8:
        notes.append(f"{facts.format} stored at {bits} bits: read at 8 bits")
    depth = 16 if pixels.dtype == np.uint16 else 8
    return Picture(pixels, alpha, depth, mode, facts.format, meta, notes)


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(Base.Orientation, 1))
    except Exception:  # as open_image: a broken EXIF block leaves the pixels as stored
        return 1
    return value if 1 <= value <= 8 else 1


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels as a person sees them, for EXIF orientation 1-8 (as PIL.ImageOps.exif_transpose)."""
    turned = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }[orientation](arr)
    return np.ascontiguousarray(turned)


def _full_depth_colour(im: Image.Image, data: bytes):
    """(pixels, alpha, mode) for 16-bit colour or grey+alpha PNG/TIFF, which Pillow would cut to 8 bits;
    None for everything Pillow decodes whole (16-bit grey PNG/TIFF included: it reads them as I;16)."""
    if im.format == "PNG" and data[24] == 16 and data[25] in (2, 4, 6):  # IHDR bit depth, colour type
        arr = imagecodecs.png_decode(data)
        return _split(arr, has_alpha=data[25] in (4, 6), associated=False)
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))
        samples, photometric = im.tag_v2.get(277, 1), im.tag_v2.get(262)
        if max(bits) == 16 and samples >= 2 and photometric in (1, 2):  # minisblack + alpha, RGB(A)
            return _tiff_16(data)
    return None


def _tiff_16(data: bytes):
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        arr = page.asarray()
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
            arr = np.moveaxis(arr, 0, -1)
        extras = tuple(page.extrasamples)
    colour = 3 if page.photometric == tifffile.PHOTOMETRIC.RGB else 1
    kind = extras[0] if extras and arr.shape[-1] > colour else 0
    return _split(arr[..., :colour + (kind in (1, 2))], has_alpha=kind in (1, 2), associated=kind == 1)


def _split(arr: np.ndarray, has_alpha: bool, associated: bool):
    arr = arr.astype(np.uint16, copy=False)
    if arr.ndim == 2:
        arr = arr[..., None]
    if not has_alpha:
        pixels = arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3]
        return np.ascontiguousarray(pixels), None, "RGB;16" if pixels.ndim == 3 else "I;16"
    colour, alpha = arr[..., :-1], arr[..., -1]
    if associated:  # premultiplied: the stored colour is colour * alpha
        a = alpha[..., None].astype(np.float64)
        colour = np.where(a > 0, np.clip(np.rint(colour * 65535.0 / np.maximum(a, 1)), 0, 65535), 0)
        colour = colour.astype(np.uint16)
    pixels = colour[..., 0] if colour.shape[-1] == 1 else colour
    return np.ascontiguousarray(pixels), np.ascontiguousarray(alpha), "LA;16" if pixels.ndim == 2 else "RGBA;16"


def _from_pillow(im: Image.Image, meta: Metadata, notes: list[str]):
    """(pixels, alpha, meta) of an image Pillow decoded whole and open_image already turned upright."""
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16), None, meta  # native byte order, whatever the file's
    if mode in ("I", "F"):
        return _grey_to_16(np.asarray(im), notes), None, meta
    if mode == "CMYK":
        im, meta = _cmyk_to_srgb(im, meta, notes)
    elif mode == "LAB":
        im = ImageCms.applyTransform(im, ImageCms.buildTransform(ImageCms.createProfile("LAB"), SRGB, "LAB", "RGB"))
        notes.append("LAB converted to sRGB")
    elif mode in ("P", "PA", "L", "RGB") and ("transparency" in im.info or mode == "PA"):
        rgba = im.convert("RGBA")
        im = rgba.convert("LA") if mode == "L" else rgba
    elif mode in ("P", "YCbCr", "HSV", "RGBX", "RGBa"):
        im = im.convert("RGBA" if mode == "RGBa" else "RGB")
    elif mode in ("1", "La"):
        im = im.convert("LA" if mode == "La" else "L")
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        raise ImageError("unsupported", f"cannot convert mode {mode}")
    arr = np.asarray(im)
    if im.mode in ("LA", "RGBA"):
        colour = arr[..., 0] if im.mode == "LA" else arr[..., :3]
        return np.ascontiguousarray(colour), np.ascontiguousarray(arr[..., -1]), meta
    return arr, None, meta


def _grey_to_16(arr: np.ndarray, notes: list[str]) -> np.ndarray:
    """32-bit integer or float grey to uint16: integers that fit stay as they are; floats in 0..1 are scaled
    by 65535; anything else is stretched from its own minimum..maximum."""
    if arr.dtype.kind in "iu" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        return arr.astype(np.uint16)
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if arr.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    else:
        notes.append("32-bit grey stretched to 16 bits from its own range")
    scaled = (values - low) * (65535.0 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)


def _cmyk_to_srgb(im: Image.Image, meta: Metadata, notes: list[str]) -> tuple[Image.Image, Metadata]:
    """Through the embedded profile when it is a CMYK one (relative colorimetric with black-point compensation,
    what Photoshop does by default); Pillow's formula otherwise. Adobe's inverted CMYK JPEG is undone by
    Pillow's JPEG decoder already. The result is sRGB, so the CMYK profile no longer describes it."""
    profile = None
    if meta.icc:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(meta.icc))
            if profile.profile.xcolor_space.strip() != "CMYK":
                profile = None
        except Exception:  # a broken profile: the plain conversion is better than no picture
            profile = None
    if profile is not None:
        rgb = ImageCms.profileToProfile(im, profile, SRGB, renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
                                        outputMode="RGB", flags=ImageCms.Flags.BLACKPOINTCOMPENSATION)
        notes.append("CMYK converted to sRGB through its ICC profile")
    else:
        rgb = im.convert("RGB")
        notes.append("CMYK without an ICC profile converted to RGB by formula")
    return rgb, replace(meta, icc=None)


# ------------------------------------------------------------------ writing


def write_picture(pixels: np.ndarray, alpha: np.ndarray | None, fmt: str, meta: Metadata,
                  quality: int = 92) -> tuple[bytes, list[str]]:
    """Encode upright (H, W) grey or (H, W, 3) colour pixels (uint8/uint16, alpha alike or None) as fmt (one of
    WRITE_FORMATS) with `meta`. Returns the bytes and notes, one per thing the format could not keep."""
    fmt = fmt.upper()
    if fmt not in WRITE_FORMATS:
        raise ValueError(f"cannot write {fmt}: one of {', '.join(WRITE_FORMATS)}")
    _check(pixels, alpha)
    notes: list[str] = []
    pixels, alpha = _layout(pixels, alpha, fmt, notes)
    meta = replace(meta, exif=upright_exif(meta.exif), icc=_fitting_icc(meta.icc, pixels, notes))
    if meta.text and fmt != "PNG":
        notes.append(f"{fmt} has no PNG text chunks: text not kept")
    writer = {"PNG": _write_png, "JPEG": _write_jpeg, "WEBP": _write_webp, "TIFF": _write_tiff}[fmt]
    return writer(pixels, alpha, meta, quality, notes), notes


def _layout(pixels: np.ndarray, alpha: np.ndarray | None, fmt: str, notes: list[str]):
    """The pixels and alpha as the format can hold them: 8 bits for JPEG and WebP, no alpha in JPEG, colour
    only in WebP (grey as R = G = B)."""
    if fmt == "JPEG" and alpha is not None:
        notes.append("JPEG has no transparency: alpha dropped")
        alpha = None
    if fmt in ("JPEG", "WEBP") and pixels.dtype == np.uint16:
        notes.append(f"{fmt} has no 16-bit: written at 8 bits")
        pixels, alpha = _eight_bit(pixels), None if alpha is None else _eight_bit(alpha)
    if fmt == "WEBP" and pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if fmt == "TIFF" and pixels.ndim == 2 and alpha is not None and pixels.dtype == np.uint16:
        # Pillow has no 16-bit grey+alpha TIFF mode and refuses to open one: such a file could not be read back
        # by pixelmill (nor ingested), so the grey goes into R, G and B; no bit is lost.
        pixels = np.repeat(pixels[..., None], 3, axis=2)
        notes.append("TIFF: 16-bit grey with alpha written as RGBA (Pillow opens no 16-bit grey+alpha TIFF)")
    return pixels, alpha


def _fitting_icc(icc: bytes | None, pixels: np.ndarray, notes: list[str]) -> bytes | None:
    """The profile, unless its colour space is not the pixels' (a grey scan's profile on a colourised output):
    a reader would misread the colours or reject the file."""
    if not icc:
        return icc
    space = icc[16:20].decode("latin-1").strip()  # the header's data colour space signature
    wanted = "RGB" if pixels.ndim == 3 else "GRAY"
    if space == wanted:
        return icc
    notes.append(f"ICC profile dropped: a {space} profile does not fit {wanted} pixels")
    return None


def _check(pixels: np.ndarray, alpha: np.ndarray | None) -> None:
    if pixels.dtype not in (np.uint8, np.uint16) or not (pixels.ndim == 2 or (pixels.ndim == 3
                                                                              and pixels.shape[2] == 3)):
        raise ValueError(f"pixels must be (H, W) or (H, W, 3) uint8/uint16, not {pixels.shape} {pixels.dtype}")
    if alpha is not None and (alpha.shape != pixels.shape[:2] or alpha.dtype != pixels.dtype):
        raise ValueError(f"alpha {alpha.shape} {alpha.dtype} does not match pixels {pixels.shape} {pixels.dtype}")


def _stack(pixels: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    arr = pixels if alpha is None else np.dstack([pixels, alpha])
    return np.ascontiguousarray(arr)


def _eight_bit(arr: np.ndarray) -> np.ndarray:
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # value * 255 / 65535, rounded


def _provenance(meta: Metadata) -> dict[str, str]:
    return {k.removeprefix("pixelmill:"): v for k, v in xmp_fields(meta.xmp).items() if k.startswith("pixelmill:")}


# PNG -------------------------------------------------------------


def _write_png(pixels, alpha, meta: Metadata, quality: int, notes: list[str]) -> bytes:
    arr = _stack(pixels, alpha)
    if arr.dtype == np.uint16:
        body = imagecodecs.png_encode(arr, level=1)
    else:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG", compress_level=1)  # level 1: ~3x faster than the default
        body = buf.getvalue()
    return _insert_png_chunks(body, _png_chunks(meta))


def _insert_png_chunks(png: bytes, chunks: list[bytes]) -> bytes:
    """Right after IHDR: before PLTE and IDAT, where iCCP and pHYs must be and every reader looks."""
    end = 8 + 8 + 13 + 4  # signature, IHDR's length and type, its 13 bytes, its CRC
    if png[12:16] != b"IHDR":
        raise ValueError("the PNG encoder did not start with IHDR")
    return png[:end] + b"".join(chunks) + png[end:]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_chunks(meta: Metadata) -> list[bytes]:
    chunks = []
    if meta.icc:
        chunks.append(_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(meta.icc)))
    if meta.dpi:  # pixels per metre
        chunks.append(_chunk(b"pHYs", struct.pack(">IIB", round(meta.dpi[0] / 0.0254), round(meta.dpi[1] / 0.0254),
                                                  1)))
    if meta.exif:
        chunks.append(_chunk(b"eXIf", meta.exif.removeprefix(EXIF_HEADER)))
    if meta.xmp:  # uncompressed iTXt: what Adobe and exiftool write, and scanners for "<x:xmpmeta" find
        chunks.append(_chunk(b"iTXt", XMP_KEYWORD.encode() + b"\0\0\0\0\0" + meta.xmp))
    if meta.iptc:
        profile = raw_profile("iptc", photoshop_iptc(meta.iptc)).encode("ascii")
        chunks.append(_chunk(b"zTXt", (RAW_PROFILE + "iptc").encode() + b"\0\0" + zlib.compress(profile)))
    texts = dict(meta.text) | {f"pixelmill:{k}": v for k, v in _provenance(meta).items()}
    chunks += [chunk for key, value in texts.items() if (chunk := _text_chunk(key, value))]
    return chunks


def _text_chunk(key: str, value: str) -> bytes | None:
    """tEXt when the value is latin-1, iTXt (UTF-8) otherwise; None for a keyword PNG cannot hold."""
    try:
        keyword = key.encode("latin-1")
    except UnicodeEncodeError:
        return None
    if not 1 <= len(keyword) <= 79 or b"\0" in keyword or keyword != keyword.strip():
        return None
    try:
        return _chunk(b"tEXt", keyword + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return _chunk(b"iTXt", keyword + b"\0\0\0\0\0" + value.encode("utf-8"))


# JPEG ------------------------------------------------------------


def _write_jpeg(pixels, alpha, meta: Metadata, quality: int, notes: list[str]) -> bytes:
    options: dict = {"quality": quality}
    if meta.exif:
        if len(meta.exif) <= JPEG_SEGMENT:
            options["exif"] = meta.exif
        else:
            notes.append("JPEG: EXIF over 64 KB: EXIF not kept")
    if meta.xmp:
        if len(meta.xmp) <= JPEG_SEGMENT - len(b"http://ns.adobe.com/xap/1.0/\0"):
            options["xmp"] = meta.xmp
        else:
            notes.append("JPEG: XMP over 64 KB: XMP not kept")
    if meta.icc:
        options["icc_profile"] = meta.icc  # Pillow splits a large profile over several APP2 segments
    if meta.dpi:
        options["dpi"] = meta.dpi
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", **options)
    data = buf.getvalue()
    if meta.iptc:
        segment = PHOTOSHOP_HEADER + photoshop_iptc(meta.iptc)
        if len(segment) <= JPEG_SEGMENT:
            data = _insert_app13(data, segment)
        else:
            notes.append("JPEG: IPTC over 64 KB: IPTC not kept")
    return data


def _insert_app13(jpeg: bytes, segment: bytes) -> bytes:
    """APP13 goes after the APP0 (JFIF), APP1 (EXIF, XMP) and APP2 (ICC) segments, where Photoshop puts it."""
    pos = 2
    while jpeg[pos] == 0xFF and jpeg[pos + 1] in (0xE0, 0xE1, 0xE2):
        pos += 2 + int.from_bytes(jpeg[pos + 2:pos + 4], "big")
    return jpeg[:pos] + b"\xff\xed" + (len(segment) + 2).to_bytes(2, "big") + segment + jpeg[pos:]


# WebP ------------------------------------------------------------


def _write_webp(pixels, alpha, meta: Metadata, quality: int, notes: list[str]) -> bytes:
    if meta.iptc:
        notes.append("WEBP has no IPTC block: IPTC not kept (XMP kept)")
    options: dict = {"quality": quality}
    exif = exif_with_dpi(meta.exif, meta.dpi)  # WebP has no resolution field of its own
    if exif:
        options["exif"] = exif
    if meta.xmp:
        options["xmp"] = meta.xmp
    if meta.icc:
        options["icc_profile"] = meta.icc
    buf = io.BytesIO()
    Image.fromarray(_stack(pixels, alpha)).save(buf, "WEBP", **options)
    return buf.getvalue()


# TIFF ------------------------------------------------------------

# tifffile refuses to write the EXIF and GPS pointer tags, so a tag one below each stands in for it (the same
# place in IFD0's sorted entries) until _append_sub_ifds renames it and points it at the appended sub-IFD.
PLACEHOLDER = {IFD.Exif: IFD.Exif - 1, IFD.GPSInfo: IFD.GPSInfo - 1}
# IFD0 tags of the EXIF that a TIFF holds as its own tags
TIFF_STRINGS = (Base.ImageDescription, Base.Make, Base.Model, Base.Software, Base.DateTime, Base.Artist,
                Base.HostComputer, Base.Copyright)


def _write_tiff(pixels, alpha, meta: Metadata, quality: int, notes: list[str]) -> bytes:
    arr = _stack(pixels, alpha)
    exif = load_exif(meta.exif) if meta.exif else None
    tags = [(Base.Orientation, "H", 1, 1, True)]
    subs: dict[int, dict] = {}
    if exif is not None:
        tags += [(tag, "s", 0, _tiff_string(exif[tag]), True) for tag in TIFF_STRINGS if tag in exif]
        subs = _exif_sub_ifds(exif)
        tags += [(PLACEHOLDER[tag], "I", 1, 0, True) for tag in subs]  # made real once the file exists
    if meta.xmp:
        tags.append((700, "B", len(meta.xmp), meta.xmp, True))
    if meta.iptc:
        tags.append((33723, 7, len(meta.iptc), meta.iptc, True))  # UNDEFINED
    buf = io.BytesIO()
    tifffile.imwrite(
        buf, arr, photometric="rgb" if pixels.ndim == 3 else "minisblack", planarconfig="contig",
        extrasamples=("unassalpha",) if alpha is not None else None, compression="zlib", predictor=True,
        tile=(256, 256) if max(arr.shape[:2]) > TILE_ABOVE else None, iccprofile=meta.icc,
        resolution=meta.dpi, resolutionunit="INCH" if meta.dpi else None,
        metadata=None, software=False, extratags=tags,  # no tifffile JSON description, no tifffile Software tag
        bigtiff=False,  # _append_sub_ifds patches classic TIFF; 100 MP at 16-bit RGBA is 0.8 GB, far from 4 GB
    )
    return _append_sub_ifds(buf.getvalue(), subs)


def _tiff_string(value) -> bytes:
    if isinstance(value, bytes):
        return value
    try:  # Pillow read the bytes as latin-1: this gives them back as they were (UTF-8 mostly)
        return str(value).encode("latin-1")
    except UnicodeEncodeError:
        return str(value).encode("utf-8")


def _exif_sub_ifds(exif: Image.Exif) -> dict[int, dict]:
    """The EXIF's ExifIFD (with its Interop IFD) and GPS IFD, as tag -> value dicts ready to serialise."""
    subs = {}
    for tag in (IFD.Exif, IFD.GPSInfo):
        if tag not in exif:
            continue
        values = keep_bytes(dict(exif.get_ifd(tag)))
        if tag == IFD.Exif and IFD.Interop in values:
            values[IFD.Interop] = keep_bytes(dict(exif.get_ifd(IFD.Interop)))
        if values:
            subs[tag] = values
    return subs


def _append_sub_ifds(tiff: bytes, subs: dict[int, dict]) -> bytes:
    """tifffile writes no EXIF sub-IFD: append each after the image, turn IFD0's placeholder into its pointer."""
    if not subs:
        return tiff
    endian = "<" if tiff[:2] == b"II" else ">"
    header = tiff[:4] + struct.pack(endian + "I", 8)
    out = bytearray(tiff)
    ifd0 = struct.unpack_from(endian + "I", tiff, 4)[0]
    count = struct.unpack_from(endian + "H", tiff, ifd0)[0]
    entries = {struct.unpack_from(endian + "H", tiff, ifd0 + 2 + 12 * i)[0]: ifd0 + 2 + 12 * i for i in range(count)}
    for tag, values in subs.items():
        out += b"\0" * (len(out) % 2)  # IFDs start on a word boundary
        ifd = ImageFileDirectory_v2(ifh=header, group=tag)
        for key, value in values.items():
            ifd[key] = value
        offset = len(out)
        out += ifd.tobytes(offset)
        entry = entries[PLACEHOLDER[tag]]
        struct.pack_into(endian + "H", out, entry, tag)
        struct.pack_into(endian + "I", out, entry + 8, offset)
    return bytes(out)
