"""What a picture file carries besides its pixels: EXIF, XMP, IPTC, the ICC profile, DPI and PNG text.

`read_metadata` gathers them from any format Pillow opens, `for_output` rewrites them for a restored output
(upright, new pixel size, DPI scaled, provenance added) and the `*_fields` functions give the readable values
that tests and `lineage` look at. A broken block is dropped, never raised: bad EXIF must not cost a good image.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import zlib
from dataclasses import dataclass, field, replace
from fractions import Fraction
from xml.dom import minidom

from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

EXIF_HEADER = b"Exif\x00\x00"
PIXELMILL_NS = "https://pixelmill.dev/ns/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XMLNS_NS = "http://www.w3.org/2000/xmlns/"
XMP_NS = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "pixelmill": PIXELMILL_NS,
}
XMP_KEYWORD = "XML:com.adobe.xmp"  # the PNG iTXt keyword Adobe and exiftool use for the packet
RAW_PROFILE = "Raw profile type "  # ImageMagick's PNG text chunks: "Raw profile type exif", "... iptc"
PHOTOSHOP_HEADER = b"Photoshop 3.0\x00"
IPTC_RESOURCE = 0x0404  # the Photoshop image resource that holds IPTC-IIM

Base, IFD = ExifTags.Base, ExifTags.IFD
# The IFD0 tags of a TIFF that describe the picture rather than its storage: these make its EXIF.
TIFF_DESCRIPTIVE = (Base.ImageDescription, Base.Make, Base.Model, Base.Orientation, Base.XResolution,
                    Base.YResolution, Base.ResolutionUnit, Base.Software, Base.DateTime, Base.Artist,
                    Base.HostComputer, Base.Copyright, Base.DocumentName, Base.PageName)

# IPTC-IIM record 2 (application record) datasets, by the names exiftool prints in lower case
IPTC_NAMES = {5: "object-name", 25: "keywords", 55: "date-created", 80: "by-line", 85: "by-line-title",
              90: "city", 101: "country", 105: "headline", 110: "credit", 115: "source", 116: "copyright",
              120: "caption"}
IPTC_DATASETS = {name: number for number, name in IPTC_NAMES.items()}


@dataclass(frozen=True)
class Metadata:
    """Everything a file carries besides pixels. `exif` always starts with b"Exif\\0\\0" (as Pillow's
    Image.Exif().tobytes() gives it and a JPEG APP1 holds it); writers strip it where a format wants bare TIFF."""

    exif: bytes | None = None  # b"Exif\0\0" + a TIFF structure (IFD0, ExifIFD, GPS)
    xmp: bytes | None = None  # the XMP packet (UTF-8 XML)
    iptc: bytes | None = None  # IPTC-IIM datasets (0x1C ...), without the Photoshop 8BIM wrapper
    icc: bytes | None = None  # the embedded ICC profile
    dpi: tuple[float, float] | None = None
    text: dict[str, str] = field(default_factory=dict)  # PNG tEXt/iTXt/zTXt other than XMP, raw profiles, pixelmill

    @property
    def adobe_rgb(self) -> bool:
        """No ICC profile, but the EXIF says Adobe RGB the DCF way: ColorSpace uncalibrated + interop index R03."""
        if self.icc or not self.exif:
            return False
        try:
            exif = load_exif(self.exif)
            return (exif.get_ifd(IFD.Exif).get(Base.ColorSpace) == 0xFFFF
                    and str(exif.get_ifd(IFD.Interop).get(Base.InteropIndex, "")).strip("\0 ") == "R03")
        except Exception:
            return False


# ------------------------------------------------------------------ reading


def read_metadata(im: Image.Image, data: bytes) -> Metadata:
    """The metadata of an opened (not yet transposed) image whose file is `data`; broken blocks are skipped."""
    text = png_text(data) if im.format == "PNG" else {}
    return Metadata(
        exif=_safe(_exif_of, im, text),
        xmp=_safe(_xmp_of, im, text),
        iptc=_safe(_iptc_of, im, text),
        icc=im.info.get("icc_profile") or None,
        dpi=_safe(_dpi_of, im),
        text={k: v for k, v in text.items() if not _special_text(k)},
    )


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception:  # every reader of a foreign block: a broken one is simply absent
        return None


def _special_text(key: str) -> bool:
    """PNG text chunks that are metadata blocks (read into their own fields) or our own provenance copy."""
    return key == XMP_KEYWORD or key.startswith((RAW_PROFILE, "pixelmill:"))


MAX_TEXT_CHUNK = 16 << 20  # inflated bytes of one PNG text chunk: larger is a zip bomb, not metadata


def png_text(data: bytes) -> dict[str, str]:
    """The tEXt, zTXt and iTXt chunks of a PNG, wherever they are, read from its bytes: Pillow's `im.text`
    would decode every pixel again to reach the ones after the image data. A broken chunk is skipped."""
    out, pos = {}, 8
    while pos + 12 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IEND":
            break
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            with contextlib.suppress(Exception):
                key, value = _text_chunk(kind, data[pos + 8:pos + 8 + size])
                out[key] = value
        pos += 12 + size
    return out


def _text_chunk(kind: bytes, body: bytes) -> tuple[str, str]:
    key, _, rest = body.partition(b"\0")
    if kind == b"tEXt":
        return key.decode("latin-1"), rest.decode("latin-1")
    if kind == b"zTXt":  # compression method byte, then zlib
        return key.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")
    compressed = rest[0] == 1  # iTXt: flag, method, language\0, translated keyword\0, UTF-8 text
    _, _, rest = rest[2:].partition(b"\0")
    _, _, text = rest.partition(b"\0")
    return key.decode("latin-1"), (_inflate(text) if compressed else text).decode("utf-8")


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_TEXT_CHUNK)
    if inflater.unconsumed_tail:
        raise ValueError("PNG text chunk inflates past the limit")
    return out


def load_exif(exif: bytes) -> Image.Exif:
    out = Image.Exif()
    out.load(exif)
    return out


def _exif_of(im: Image.Image, text: dict[str, str]) -> bytes | None:
    if im.format == "TIFF":
        raw = _tiff_exif(im)
    else:
        raw = im.info.get("exif")
        if raw is None and im.format == "PNG":
            profile = text.get(RAW_PROFILE + "exif") or text.get(RAW_PROFILE + "APP1")
            raw = decode_raw_profile(profile) if profile else None
    if not raw:
        return None
    raw = raw if raw.startswith(EXIF_HEADER) else EXIF_HEADER + raw
    exif = load_exif(raw)
    exif.get_ifd(IFD.Exif)  # a broken sub-IFD raises here, not later in for_output
    return raw if len(exif) else None


def _tiff_exif(im: Image.Image) -> bytes | None:
    """A TIFF's EXIF is its IFD0: keep the descriptive tags and the EXIF/GPS sub-IFDs, not the strip layout."""
    src = im.getexif()
    out, subs = Image.Exif(), 0
    for tag in TIFF_DESCRIPTIVE:
        if tag in src:
            out[tag] = src[tag]
    for sub in (IFD.Exif, IFD.GPSInfo):
        values = dict(src.get_ifd(sub)) if sub in src else {}
        if sub == IFD.Exif and IFD.Interop in values:
            values[IFD.Interop] = keep_bytes(dict(src.get_ifd(IFD.Interop)))
        if values:
            out.get_ifd(sub).update(keep_bytes(values))
            subs += 1
    keep_bytes(out)
    return out.tobytes() if len(out) or subs else None


def keep_bytes(values):
    """Pillow reads EXIF strings as latin-1 and writes them as ASCII with '?' for the rest: hand it the original
    bytes instead (most cameras and editors write UTF-8), so "Zoë" survives a rewrite."""
    for tag, value in list(values.items()):
        if isinstance(value, str) and not value.isascii():
            try:
                values[tag] = value.encode("latin-1")
            except UnicodeEncodeError:  # set by us, not read from a file
                values[tag] = value.encode("utf-8")
    return values


def _xmp_of(im: Image.Image, text: dict[str, str]) -> bytes | None:
    raw = im.info.get("xmp") or text.get(XMP_KEYWORD)
    if raw is None and RAW_PROFILE + "xmp" in text:
        raw = decode_raw_profile(text[RAW_PROFILE + "xmp"])
    if raw is None and im.format == "TIFF":
        raw = im.tag_v2.get(700)
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if not raw:
        return None
    raw = bytes(raw).strip(b"\0 \r\n\t")
    _parse_xmp(raw)  # unparseable XML is dropped: nothing downstream could read or update it
    return raw


def _iptc_of(im: Image.Image, text: dict[str, str]) -> bytes | None:
    raw = None
    if im.format == "JPEG":
        raw = im.info.get("photoshop", {}).get(IPTC_RESOURCE)
    elif im.format == "TIFF":
        # The tag's bytes as stored: Photoshop writes IPTC as LONGs, of which Pillow's tag_v2 keeps only the
        # first (Pillow's own IptcImagePlugin reads _tagdata too).
        raw = im.tag_v2._tagdata.get(33723)
    elif im.format == "PNG":
        for kind in ("iptc", "8bim"):
            if text.get(RAW_PROFILE + kind):
                raw = decode_raw_profile(text[RAW_PROFILE + kind])
                break
    if raw and raw.startswith(b"8BIM"):
        raw = photoshop_resources(raw).get(IPTC_RESOURCE)
    if not raw:
        return None
    raw = bytes(raw).rstrip(b"\0")  # resource and LONG padding
    iptc_datasets(raw)  # raises on a broken block
    return raw


def _dpi_of(im: Image.Image) -> tuple[float, float] | None:
    """The resolution in dots per inch; None when absent or 1 x 1, what TIFF writers put for "unknown"."""
    dpi = im.info.get("dpi")
    if dpi and all(float(v) > 1 for v in dpi):
        # PNG stores pixels per metre: 300 dpi comes back as 299.9994; a tenth of a dpi is its precision
        digits = 1 if im.format == "PNG" else 4
        return round(float(dpi[0]), digits), round(float(dpi[1]), digits)
    exif = im.getexif()  # WebP, HEIF, AVIF: the resolution lives only in EXIF
    unit = {2: 1.0, 3: 2.54}.get(int(exif.get(Base.ResolutionUnit, 2)))
    x, y = exif.get(Base.XResolution), exif.get(Base.YResolution)
    if unit and x and y and float(x) * unit > 1 and float(y) * unit > 1:
        return round(float(x) * unit, 4), round(float(y) * unit, 4)
    return None


# ------------------------------------------------------------------ for an output


def for_output(meta: Metadata, width: int, height: int, scale: int,
               provenance: dict[str, str] | None = None) -> Metadata:
    """The metadata of a width x height output made from this input at `scale` (pixels are upright).

    EXIF: Orientation 1, PixelX/YDimension, X/YResolution times scale, no thumbnail (it shows the old pixels);
    an EXIF block Pillow cannot rewrite is dropped (kept, its orientation would turn the output again).
    XMP: tiff:Orientation 1, pixel dimensions and resolution updated where present, provenance merged as
    pixelmill:* properties (a new packet when there is none). DPI times scale; ICC, IPTC and text unchanged."""
    dpi = (meta.dpi[0] * scale, meta.dpi[1] * scale) if meta.dpi else None
    return replace(meta, exif=_safe(_exif_for_output, meta.exif, width, height, scale),
                   xmp=_xmp_for_output(meta.xmp, width, height, scale, provenance), dpi=dpi)


def _exif_for_output(exif: bytes | None, width: int, height: int, scale: int) -> bytes | None:
    if not exif:
        return None
    out = load_exif(exif)
    keep_bytes(out)
    out[Base.Orientation] = 1
    for tag in (Base.XResolution, Base.YResolution):
        if tag in out and (value := _scaled(out[tag], scale)) is not None:
            out[tag] = value
    sub = out.get_ifd(IFD.Exif)
    keep_bytes(sub)
    sub[Base.ExifImageWidth], sub[Base.ExifImageHeight] = width, height
    # Exif.tobytes writes IFD0 and its sub-IFDs only: IFD1, the thumbnail, is left behind
    return out.tobytes()


def upright_exif(exif: bytes | None) -> bytes | None:
    """The EXIF with Orientation 1 (unchanged when it already says so); for writers handed upright pixels."""
    if not exif:
        return exif
    try:
        out = load_exif(exif)
        if out.get(Base.Orientation, 1) == 1:
            return exif
        _all_bytes(out)
        out[Base.Orientation] = 1
        return out.tobytes()
    except Exception:
        return None


def exif_with_dpi(exif: bytes | None, dpi: tuple[float, float] | None) -> bytes | None:
    """The EXIF (a new one when there is none) with X/YResolution = dpi in inches: for WebP, whose only place
    for a resolution is its EXIF."""
    if not dpi:
        return exif
    out = (_safe(load_exif, exif) if exif else None) or Image.Exif()
    _all_bytes(out)
    out[Base.XResolution], out[Base.YResolution] = (IFDRational(Fraction(v).limit_denominator(10_000)) for v in dpi)
    out[Base.ResolutionUnit] = 2
    return out.tobytes()


def _all_bytes(exif: Image.Exif) -> None:
    keep_bytes(exif)
    if IFD.Exif in exif:  # get_ifd would add an empty ExifIFD to an EXIF without one
        keep_bytes(exif.get_ifd(IFD.Exif))


def _scaled(value, scale: int) -> IFDRational | None:
    number = float(value)
    if not number > 0 or number == float("inf"):  # 0/0 rationals read as nan
        return None
    return IFDRational(Fraction(number).limit_denominator(10_000) * scale)


# ------------------------------------------------------------------ XMP


def _parse_xmp(xmp: bytes) -> minidom.Document:
    return minidom.parseString(xmp.strip(b"\0 \r\n\t"))


def _descriptions(doc: minidom.Document) -> list[minidom.Element]:
    return list(doc.getElementsByTagNameNS(RDF_NS, "Description"))


def _children(parent: minidom.Element, ns: str, local: str | None = None) -> list[minidom.Element]:
    return [n for n in parent.childNodes if n.nodeType == n.ELEMENT_NODE and n.namespaceURI == ns
            and (local is None or n.localName == local)]


def _text(node: minidom.Node) -> str:
    return "".join(c.data for c in node.childNodes if c.nodeType in (c.TEXT_NODE, c.CDATA_SECTION_NODE)).strip()


def _update_property(doc: minidom.Document, prefix: str, local: str, fn) -> None:
    """Set each occurrence of prefix:local (an attribute or a simple element) to fn(old value); absent stays absent."""
    ns = XMP_NS[prefix]
    for desc in _descriptions(doc):
        attr = desc.getAttributeNodeNS(ns, local)
        if attr is not None:
            attr.value = fn(attr.value)
        for element in _children(desc, ns, local):
            new = fn(_text(element))
            while element.firstChild:
                element.removeChild(element.firstChild)
            element.appendChild(doc.createTextNode(new))


def _scaled_xmp_rational(value: str, scale: int) -> str:
    try:
        number = Fraction(value.strip()) * scale
    except (ValueError, ZeroDivisionError):
        return value
    return f"{number.numerator}/{number.denominator}" if number.denominator != 1 else f"{number.numerator}/1"


NEW_PACKET = (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
              b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="' + RDF_NS.encode() + b'"></rdf:RDF>'
              b'</x:xmpmeta><?xpacket end="w"?>')
PROPERTY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


def _xmp_for_output(xmp: bytes | None, width: int, height: int, scale: int,
                    provenance: dict[str, str] | None) -> bytes | None:
    if not xmp and not provenance:
        return xmp
    doc = _safe(_parse_xmp, xmp) if xmp else None
    if doc is not None and not doc.getElementsByTagNameNS(RDF_NS, "RDF"):
        doc = None  # XML, but not an XMP packet
    if doc is None:
        if not provenance:
            return None  # unparseable: nothing could update its orientation, so it cannot stay
        doc = _parse_xmp(NEW_PACKET)
    _update_property(doc, "tiff", "Orientation", lambda _: "1")
    _update_property(doc, "tiff", "ImageWidth", lambda _: str(width))
    _update_property(doc, "tiff", "ImageLength", lambda _: str(height))
    _update_property(doc, "exif", "PixelXDimension", lambda _: str(width))
    _update_property(doc, "exif", "PixelYDimension", lambda _: str(height))
    for local in ("XResolution", "YResolution"):
        _update_property(doc, "tiff", local, lambda v: _scaled_xmp_rational(v, scale))
    if provenance:
        _set_provenance(doc, provenance)
    return "".join(node.toxml() for node in doc.childNodes).encode("utf-8")


def _set_provenance(doc: minidom.Document, provenance: dict[str, str]) -> None:
    """Replace any pixelmill:* properties (an output of an output) by one rdf:Description holding these."""
    for key in provenance:
        if not PROPERTY_NAME.match(key):
            raise ValueError(f"provenance key {key!r} is not an XML name")
    for desc in _descriptions(doc):
        for i in reversed(range(desc.attributes.length)):
            attr = desc.attributes.item(i)
            if attr.namespaceURI == PIXELMILL_NS or (attr.namespaceURI == XMLNS_NS and attr.value == PIXELMILL_NS):
                desc.removeAttributeNode(attr)
        for element in _children(desc, PIXELMILL_NS):
            desc.removeChild(element)
    rdf = doc.getElementsByTagNameNS(RDF_NS, "RDF")[0]
    prefix = rdf.prefix or "rdf"
    desc = doc.createElementNS(RDF_NS, f"{prefix}:Description")
    desc.setAttributeNS(RDF_NS, f"{prefix}:about", "")
    desc.setAttributeNS(XMLNS_NS, "xmlns:pixelmill", PIXELMILL_NS)
    for key, value in provenance.items():
        prop = doc.createElementNS(PIXELMILL_NS, f"pixelmill:{key}")
        prop.appendChild(doc.createTextNode(str(value)))
        desc.appendChild(prop)
    rdf.appendChild(desc)


def xmp_fields(xmp: bytes | None) -> dict[str, str]:
    """dc:title, dc:rights, dc:creator (first value), tiff:Orientation, exif:PixelX/YDimension and every
    pixelmill:* property present, keyed by those qualified names; {} for no or unreadable XMP."""
    doc = _safe(_parse_xmp, xmp) if xmp else None
    if doc is None:
        return {}
    out: dict[str, str] = {}
    wanted = [("dc", "title"), ("dc", "rights"), ("dc", "creator"), ("tiff", "Orientation"),
              ("exif", "PixelXDimension"), ("exif", "PixelYDimension")]
    for desc in _descriptions(doc):
        for prefix, local in wanted:
            value = _property(desc, XMP_NS[prefix], local)
            if value is not None:
                out.setdefault(f"{prefix}:{local}", value)
        for i in range(desc.attributes.length):
            attr = desc.attributes.item(i)
            if attr.namespaceURI == PIXELMILL_NS:
                out[f"pixelmill:{attr.localName}"] = attr.value
        for element in _children(desc, PIXELMILL_NS):
            out[f"pixelmill:{element.localName}"] = _text(element)
    return out


def _property(desc: minidom.Element, ns: str, local: str) -> str | None:
    """A simple property's value, or a language alternative's x-default (else first) item, or a list's first."""
    attr = desc.getAttributeNodeNS(ns, local)
    if attr is not None:
        return attr.value
    for element in _children(desc, ns, local):
        items = list(element.getElementsByTagNameNS(RDF_NS, "li"))
        if not items:
            return _text(element)
        default = [li for li in items if li.getAttribute("xml:lang") == "x-default"]
        return _text((default or items)[0])
    return None


# ------------------------------------------------------------------ IPTC and Photoshop resources


def iptc_datasets(iptc: bytes) -> list[tuple[int, int, bytes]]:
    """(record, dataset, value) for each IPTC-IIM dataset; ValueError on a broken block."""
    out, pos = [], 0
    while pos < len(iptc):
        if iptc[pos] != 0x1C or pos + 5 > len(iptc):
            raise ValueError(f"IPTC: no dataset marker at byte {pos}")
        record, number, size = iptc[pos + 1], iptc[pos + 2], int.from_bytes(iptc[pos + 3:pos + 5], "big")
        pos += 5
        if size & 0x8000:  # extended dataset: the next (size & 0x7FFF) bytes hold the length
            n = size & 0x7FFF
            size, pos = int.from_bytes(iptc[pos:pos + n], "big"), pos + n
        if pos + size > len(iptc):
            raise ValueError("IPTC: dataset runs past the block")
        out.append((record, number, iptc[pos:pos + size]))
        pos += size
    return out


def iptc_block(fields: dict[str, str | list[str]]) -> bytes:
    """IPTC-IIM bytes (record version first) from names as `iptc_fields` gives them; lists repeat a dataset."""
    out = b"\x1c\x02\x00\x00\x02\x00\x04"
    for name, values in fields.items():
        for value in [values] if isinstance(values, str) else values:
            raw = value.encode("utf-8")
            out += bytes([0x1C, 2, IPTC_DATASETS[name]]) + len(raw).to_bytes(2, "big") + raw
    return out


def iptc_fields(iptc: bytes | None) -> dict[str, str]:
    """Record 2's named datasets, e.g. {"by-line": ..., "caption": ..., "copyright": ...}; repeated ones
    (keywords) joined with ", "; {} for no or broken IPTC."""
    datasets = _safe(iptc_datasets, iptc) if iptc else None
    out: dict[str, list[str]] = {}
    for record, number, value in datasets or []:
        if record == 2 and number in IPTC_NAMES:
            out.setdefault(IPTC_NAMES[number], []).append(_decode(value))
    return {name: ", ".join(values) for name, values in out.items()}


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8").strip("\0 ")
    except UnicodeDecodeError:
        return value.decode("latin-1").strip("\0 ")


def photoshop_resources(data: bytes) -> dict[int, bytes]:
    """Photoshop image resources ("8BIM" blocks, as in a JPEG APP13) by id; stops at the first malformed one."""
    out, pos = {}, 0
    while data[pos:pos + 4] == b"8BIM" and pos + 12 <= len(data):
        resource = int.from_bytes(data[pos + 4:pos + 6], "big")
        name_len = data[pos + 6]
        pos += 6 + (name_len + 2) // 2 * 2  # the Pascal name, padded to an even length
        size = int.from_bytes(data[pos:pos + 4], "big")
        out[resource] = data[pos + 4:pos + 4 + size]
        pos += 4 + (size + 1) // 2 * 2
    return out


def photoshop_iptc(iptc: bytes) -> bytes:
    """IPTC wrapped as the 8BIM 0x0404 resource: what APP13 (after "Photoshop 3.0\\0") and exiftool's PNG
    'Raw profile type iptc' hold."""
    pad = b"\0" if len(iptc) % 2 else b""
    return b"8BIM" + IPTC_RESOURCE.to_bytes(2, "big") + b"\0\0" + len(iptc).to_bytes(4, "big") + iptc + pad


# ------------------------------------------------------------------ PNG raw profiles


def raw_profile(kind: str, payload: bytes) -> str:
    """ImageMagick's PNG text encoding of a binary block, which exiftool reads: "\\nkind\\n  length\\nhex..."."""
    hexed = payload.hex()
    lines = [hexed[i:i + 72] for i in range(0, len(hexed), 72)]
    return f"\n{kind}\n{len(payload):8d}\n" + "\n".join(lines) + "\n"


def decode_raw_profile(text: str) -> bytes:
    _, rest = text.lstrip("\n").split("\n", 1)  # the kind line
    length, hexed = rest.strip().split("\n", 1) if "\n" in rest.strip() else (rest.strip(), "")
    payload = bytes.fromhex("".join(hexed.split()))
    return payload[: int(length)]


# ------------------------------------------------------------------ readable fields and provenance

EXIF_NAMES = {Base.Artist: "Artist", Base.Copyright: "Copyright", Base.ImageDescription: "ImageDescription",
              Base.DateTime: "DateTime", Base.Orientation: "Orientation", Base.XResolution: "XResolution",
              Base.YResolution: "YResolution", Base.Make: "Make", Base.Model: "Model", Base.Software: "Software"}
EXIF_IFD_NAMES = {Base.DateTimeOriginal: "DateTimeOriginal", Base.ExifImageWidth: "PixelXDimension",
                  Base.ExifImageHeight: "PixelYDimension", Base.ColorSpace: "ColorSpace"}


def exif_fields(exif: bytes | None) -> dict[str, object]:
    """The EXIF values a person checks (Artist, Copyright, ImageDescription, DateTime, DateTimeOriginal,
    Orientation, PixelX/YDimension, X/YResolution, Make, Model, Software): strings, ints and floats."""
    loaded = _safe(load_exif, exif) if exif else None
    if loaded is None:
        return {}
    out: dict[str, object] = {}
    for tags, names in ((loaded, EXIF_NAMES), (_safe(loaded.get_ifd, IFD.Exif) or {}, EXIF_IFD_NAMES)):
        for tag, name in names.items():
            if tag in tags:
                out[name] = _readable(tags[tag])
    return out


def _readable(value):
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        with contextlib.suppress(UnicodeError):  # Pillow decoded the bytes as latin-1; most writers meant UTF-8
            value = value.encode("latin-1").decode("utf-8")
        return value.strip("\0 ")
    if isinstance(value, IFDRational):
        return float(value)
    return value


def provenance_of(data: bytes) -> dict[str, str]:
    """The pixelmill fields a file carries: its XMP pixelmill:* properties, else its PNG `pixelmill:KEY` text
    chunks; {} when it has none or is not an image."""
    try:
        im = Image.open(io.BytesIO(data))
    except Exception:
        return {}
    with im:
        text = png_text(data) if im.format == "PNG" else {}
        fields = {k.removeprefix("pixelmill:"): v for k, v in xmp_fields(_safe(_xmp_of, im, text)).items()
                  if k.startswith("pixelmill:")}
    if not fields:
        fields = {k.removeprefix("pixelmill:"): v for k, v in text.items() if k.startswith("pixelmill:")}
    return fields
