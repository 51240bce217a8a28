"""Colour management for the model's working space (sRGB), and colour difference.

    working_space(icc, adobe_rgb)   the Conversion between an image's own RGB space and sRGB, or None when
                                    the pixels are sRGB already (or grey)
    Conversion.to_srgb(pixels)      source uint8/uint16 -> uint16 sRGB, clipped to the sRGB gamut
    Conversion.from_srgb(px, dtype) sRGB uint8/uint16 -> the source space, uint8 or uint16
    srgb_to_lab(rgb)                sRGB -> CIELAB (D65 white: the working space's own white, no adaptation)
    srgb_to_lightness(rgb)          L* alone
    delta_e2000(lab1, lab2)         CIEDE2000 (Sharma, Wu & Dalal 2005)
    srgb_delta_e2000(rgb1, rgb2)    both at once, band by band

Matrix/TRC profiles (the usual camera and editing spaces: Adobe RGB, Display P3, ProPhoto, ...) are read here
from the ICC tag table and converted in float32: device -> linear through the profile's curves, linear ->
PCS XYZ (D50) through its colorants, PCS -> linear sRGB through the inverse of sRGB's D50-adapted (Bradford)
matrix, then sRGB encoding. That is the ICC relative colorimetric path that a CMM takes for these profiles,
without its 8-bit (or 16-bit table) rounding. Profiles built on lookup tables (A2B*/B2A*) go to LittleCMS.

Speed: the conversions work on row bands with lookup tables (device code -> linear, one entry per code; linear ->
device code, a table of 2^18 cells indexed by the fourth root of the linear value, which spreads the cells where an
encoding is steep). Results are within one 16-bit code of exact (sRGB: 0.72), and 8-bit ones rounded as exact
arithmetic would round them but for 0.04% of values lying within 1/500 of a code of .5. 12 megapixels take ~0.35 s
per direction on one core (this machine, uint8 or uint16).
"""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Callable, Iterator

import numpy as np

CHUNK_ROWS = 256  # rows converted at once: bounds the float temporaries of a large image to a band

# --- Colorimetry -------------------------------------------------------------------------------------------------

D50 = np.array([0.9642, 1.0, 0.8249])  # the ICC profile connection space's illuminant
D65_XY = (0.3127, 0.3290)
SRGB_XY = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
ADOBE_RGB_XY = ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06))
ADOBE_RGB_GAMMA = 563 / 256  # 2.19921875, Adobe RGB (1998) section 4.3.1.2
BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])


def _xyz(xy: tuple[float, float]) -> np.ndarray:
    x, y = xy
    return np.array([x / y, 1.0, (1 - x - y) / y])


def rgb_to_xyz_matrix(primaries_xy, white_xy) -> np.ndarray:
    """Linear RGB -> XYZ (Y of white = 1) from chromaticities: columns are the primaries' XYZ."""
    p = np.stack([_xyz(c) for c in primaries_xy], axis=1)
    return p * np.linalg.solve(p, _xyz(white_xy))[None, :]


def bradford(src_white: np.ndarray, dst_white: np.ndarray) -> np.ndarray:
    """XYZ under src_white -> XYZ under dst_white, Bradford cone response (as ICC v4 prescribes)."""
    s, d = BRADFORD @ src_white, BRADFORD @ dst_white
    return np.linalg.inv(BRADFORD) @ np.diag(d / s) @ BRADFORD


def d50_colorants(primaries_xy, white_xy) -> np.ndarray:
    """The rXYZ/gXYZ/bXYZ columns an ICC profile of these primaries carries: adapted to D50."""
    return bradford(_xyz(white_xy), D50) @ rgb_to_xyz_matrix(primaries_xy, white_xy)


SRGB_TO_XYZ_D65 = rgb_to_xyz_matrix(SRGB_XY, D65_XY)
SRGB_TO_XYZ_D50 = d50_colorants(SRGB_XY, D65_XY)  # 0.4361 0.3851 0.1431 / 0.2225 0.7169 0.0606 / ...
ADOBE_RGB_TO_XYZ_D50 = d50_colorants(ADOBE_RGB_XY, D65_XY)


def srgb_decode(v: np.ndarray) -> np.ndarray:
    """sRGB-encoded [0, 1] -> linear (IEC 61966-2-1)."""
    v = np.asarray(v)
    return np.where(v <= 0.04045, v / 12.92, ((np.maximum(v, 0.04045) + 0.055) / 1.055) ** 2.4)


def srgb_encode(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return np.where(y <= 0.0031308, 12.92 * y, 1.055 * np.maximum(y, 0.0031308) ** (1 / 2.4) - 0.055)


# --- Tone curves (device value in [0, 1] -> linear) -------------------------------------------------------------

Curve = Callable[[np.ndarray], np.ndarray]  # float64 in, float64 out


def gamma_curve(g: float) -> Curve:
    return lambda x: np.power(x, g)


def table_curve(table: np.ndarray) -> Curve:
    """An ICC 'curv' table: samples at equally spaced inputs, linearly interpolated (as CMMs do)."""
    t = np.asarray(table, np.float64)
    grid = np.linspace(0.0, 1.0, len(t))
    return lambda x: np.interp(x, grid, t)


def para_curve(kind: int, p: tuple[float, ...]) -> Curve:
    """An ICC 'para' curve, function types 0-4 (ICC.1:2010 10.18)."""
    g, a, b, c, d, e, f = (tuple(p) + (0.0,) * 7)[:7]
    if kind == 0:
        return lambda x: np.power(x, g)
    edge = -b / a if a else np.inf  # types 1 and 2 start at x = -b/a
    if kind == 1:
        return lambda x: np.where(x >= edge, np.power(np.maximum(a * x + b, 0), g), 0.0)
    if kind == 2:
        return lambda x: np.where(x >= edge, np.power(np.maximum(a * x + b, 0), g) + c, c)
    if kind == 3:
        return lambda x: np.where(x >= d, np.power(np.maximum(a * x + b, 0), g), c * x)
    if kind == 4:
        return lambda x: np.where(x >= d, np.power(np.maximum(a * x + b, 0), g) + e, c * x + f)
    raise ProfileError(f"parametric curve of unknown function type {kind}")


def inverse(curve: Curve) -> Curve:
    """Numerical inverse of a non-decreasing curve. The forward samples are dense near 0 (x = t^2), where a
    gamma curve is flat and its inverse steep."""
    x = np.linspace(0.0, 1.0, 65537) ** 2
    y = np.maximum.accumulate(np.clip(curve(x), 0.0, 1.0))
    return lambda v: np.interp(v, y, x)


# --- Lookup tables ------------------------------------------------------------------------------------------------

ROOT_CELLS = 1 << 18  # encoding tables are indexed by floor(y ** 0.25 * ROOT_CELLS)


def decode_lut(curve: Curve, dtype) -> np.ndarray:
    """Device code (uint8 or uint16) -> linear float32, one entry per code."""
    top = np.iinfo(dtype).max
    return np.clip(curve(np.arange(top + 1) / top), 0.0, 1.0).astype(np.float32)


def encode_lut(inverse_curve: Curve, dtype) -> np.ndarray:
    """Linear -> device code, indexed by floor(y^(1/4) * ROOT_CELLS), each cell holding the code of its middle.

    Indexing by the fourth root spreads the cells where encodings are steep (near black: gamma 2.2's inverse has an
    infinite slope at 0); a code then moves by at most half a 16-bit code across half a cell, for gammas 1 to 2.6
    and sRGB alike.
    """
    top = np.iinfo(dtype).max
    u = np.minimum((np.arange(ROOT_CELLS + 1) + 0.5) / ROOT_CELLS, 1.0)
    codes = np.rint(np.clip(inverse_curve(u ** 4), 0.0, 1.0) * top)
    return codes.astype(dtype)


def _bands(height: int) -> Iterator[slice]:
    for top in range(0, height, CHUNK_ROWS):
        yield slice(top, min(top + CHUNK_ROWS, height))


def _check_rgb(pixels: np.ndarray, dtype=np.uint8) -> None:
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"need (H, W, 3) uint8 or uint16 pixels, got {pixels.shape} {pixels.dtype}")
    if np.dtype(dtype) not in (np.uint8, np.uint16):
        raise ValueError(f"can give uint8 or uint16 pixels, not {np.dtype(dtype)}")


@functools.cache
def _srgb_decode_lut(dtype) -> np.ndarray:
    return decode_lut(srgb_decode, dtype)


@functools.cache
def _srgb_encode_lut(dtype) -> np.ndarray:
    return encode_lut(srgb_encode, dtype)


# --- Conversions ---------------------------------------------------------------------------------------------------

class ProfileError(ValueError):
    """An embedded ICC profile that neither this module nor LittleCMS can use."""


class Conversion:
    """Between an image's own RGB space and sRGB (the model's working space)."""

    name: str

    def to_srgb(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 or uint16 in the source space -> (H, W, 3) uint16 sRGB, clipped to the sRGB gamut.
        uint16 so that an 8-bit wide-gamut input loses nothing to a second 8-bit rounding."""
        raise NotImplementedError

    def from_srgb(self, pixels: np.ndarray, dtype) -> np.ndarray:
        """(H, W, 3) uint8 or uint16 sRGB -> (H, W, 3) `dtype` (np.uint8 or np.uint16) in the source space."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class MatrixConversion(Conversion):
    """A matrix/TRC space: per-channel curves to linear, one 3x3 matrix to linear sRGB, all in float32."""

    def __init__(self, name: str, curves: tuple[Curve, Curve, Curve], colorants_d50: np.ndarray):
        self.name = name
        self.curves = curves
        to_srgb = np.linalg.solve(SRGB_TO_XYZ_D50, colorants_d50)  # source linear -> sRGB linear
        self.matrix = to_srgb.astype(np.float32)
        self.inverse_matrix = np.linalg.inv(to_srgb).astype(np.float32)
        self._luts: dict[tuple[str, type], np.ndarray] = {}

    def _lut(self, kind: str, dtype) -> np.ndarray:
        """(3, codes) decode tables or (3, cells) encode tables of the source curves, built on first use."""
        key = (kind, np.dtype(dtype).type)
        if key not in self._luts:
            build = decode_lut if kind == "decode" else (lambda c, t: encode_lut(inverse(c), t))
            self._luts[key] = np.stack([build(c, dtype) for c in self.curves])
        return self._luts[key]

    def to_srgb(self, pixels: np.ndarray) -> np.ndarray:
        _check_rgb(pixels)
        return self._convert(pixels, self._lut("decode", pixels.dtype), self.matrix, _srgb_encode_lut(np.uint16))

    def from_srgb(self, pixels: np.ndarray, dtype) -> np.ndarray:
        _check_rgb(pixels, dtype)
        decode = _srgb_decode_lut(pixels.dtype.type)
        return self._convert(pixels, np.stack([decode] * 3), self.inverse_matrix, self._lut("encode", dtype))

    @staticmethod
    def _convert(pixels: np.ndarray, decode: np.ndarray, matrix: np.ndarray, encode: np.ndarray) -> np.ndarray:
        h, w, _ = pixels.shape
        out = np.empty((h, w, 3), encode.dtype)
        encode = encode if encode.ndim == 2 else np.stack([encode] * 3)
        for rows in _bands(h):
            src = pixels[rows].reshape(-1, 3)
            linear = np.empty((3, len(src)), np.float32)  # planar: the matrix product is then one sgemm
            for c in range(3):
                np.take(decode[c], src[:, c], out=linear[c])
            linear = matrix @ linear
            dst = out[rows].reshape(-1, 3)
            np.clip(linear, 0.0, 1.0, out=linear)
            np.sqrt(linear, out=linear)
            np.sqrt(linear, out=linear)
            linear *= ROOT_CELLS
            index = linear.astype(np.intp)
            for c in range(3):
                dst[:, c] = encode[c][index[c]]
        return out


class CmsConversion(Conversion):
    """LittleCMS transforms for profiles built on lookup tables, relative colorimetric both ways (the intent whose
    tables are made to invert, and the one the matrix path follows). Precision is 8 bits here: Pillow's
    transforms take and give 8-bit RGB, so uint16 pixels are rounded to 8 bits on the way in and out.

    Unoptimised: LittleCMS otherwise resamples the whole transform on a coarse device-space grid, which was off by
    up to 9 codes in dark tones against the exact result (1 code unoptimised), at 33 ms/MP instead of 194 ms/MP."""

    def __init__(self, name: str, icc: bytes):
        from PIL import ImageCms

        self.name = name
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            options = {"renderingIntent": ImageCms.Intent.RELATIVE_COLORIMETRIC, "flags": ImageCms.Flags.NOOPTIMIZE}
            self._to = ImageCms.buildTransform(profile, srgb, "RGB", "RGB", **options)
            self._from = ImageCms.buildTransform(srgb, profile, "RGB", "RGB", **options)
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            raise ProfileError(f"LittleCMS cannot use the profile {name!r}: {exc}") from None

    @staticmethod
    def _apply(transform, pixels: np.ndarray) -> np.ndarray:
        from PIL import Image

        if pixels.dtype == np.uint16:
            pixels = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
        out = np.empty(pixels.shape, np.uint8)
        for rows in _bands(pixels.shape[0]):
            out[rows] = np.asarray(transform.apply(Image.fromarray(np.ascontiguousarray(pixels[rows]))))
        return out

    def to_srgb(self, pixels: np.ndarray) -> np.ndarray:
        _check_rgb(pixels)
        return self._apply(self._to, pixels).astype(np.uint16) * 257

    def from_srgb(self, pixels: np.ndarray, dtype) -> np.ndarray:
        _check_rgb(pixels, dtype)
        out = self._apply(self._from, pixels)
        return out.astype(np.uint16) * 257 if np.dtype(dtype) == np.uint16 else out


# --- ICC parsing ---------------------------------------------------------------------------------------------------

def _s15(data: bytes, offset: int, n: int) -> tuple[float, ...]:
    return tuple(v / 65536 for v in struct.unpack_from(f">{n}i", data, offset))


class _Profile:
    """The few parts of an ICC profile (ICC.1:2010 / v2) that a matrix/TRC conversion needs."""

    def __init__(self, icc: bytes):
        if len(icc) < 132 or icc[36:40] != b"acsp":
            raise ProfileError("not an ICC profile (no 'acsp' signature)")
        self.colour_space = icc[16:20]
        self.pcs = icc[20:24]
        self.device_class = icc[12:16]
        (count,) = struct.unpack_from(">I", icc, 128)
        if 132 + 12 * count > len(icc):
            raise ProfileError(f"ICC tag table claims {count} tags, more than the profile holds")
        self.tags: dict[bytes, bytes] = {}
        for i in range(count):
            sig, offset, size = struct.unpack_from(">4sII", icc, 132 + 12 * i)
            if offset + size > len(icc) or size < 8:
                raise ProfileError(f"ICC tag {sig!r} lies outside the profile")
            self.tags[sig] = icc[offset:offset + size]

    def description(self) -> str | None:
        tag = self.tags.get(b"desc")
        try:
            if tag is None:
                return None
            if tag[:4] == b"desc":  # v2 textDescriptionType: an ASCII count and string
                (n,) = struct.unpack_from(">I", tag, 8)
                return tag[12:12 + n].split(b"\0")[0].decode("latin-1").strip() or None
            if tag[:4] == b"mluc":  # v4 multiLocalizedUnicodeType: the first record, UTF-16BE
                length, offset = struct.unpack_from(">II", tag, 20)
                return tag[offset:offset + length].decode("utf-16-be").strip("\0 ") or None
        except (struct.error, UnicodeDecodeError):
            return None
        return None

    def xyz(self, sig: bytes) -> np.ndarray:
        tag = self.tags[sig]
        if tag[:4] != b"XYZ " or len(tag) < 20:
            raise ProfileError(f"ICC tag {sig!r} is not an XYZ value")
        return np.array(_s15(tag, 8, 3))

    def curve(self, sig: bytes) -> Curve:
        tag = self.tags[sig]
        if tag[:4] == b"curv" and len(tag) >= 12:
            (n,) = struct.unpack_from(">I", tag, 8)
            if len(tag) < 12 + 2 * n:
                raise ProfileError(f"ICC curve {sig!r} is truncated")
            if n == 0:
                return lambda x: np.asarray(x, np.float64)
            if n == 1:
                return gamma_curve(struct.unpack_from(">H", tag, 12)[0] / 256)  # u8Fixed8
            return table_curve(np.frombuffer(tag, ">u2", n, 12) / 65535)
        if tag[:4] == b"para" and len(tag) >= 12:
            (kind,) = struct.unpack_from(">H", tag, 8)
            n = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}.get(kind)
            if n is None or len(tag) < 12 + 4 * n:
                raise ProfileError(f"ICC parametric curve {sig!r} of type {kind} is malformed")
            return para_curve(kind, _s15(tag, 12, n))
        raise ProfileError(f"ICC curve {sig!r} has type {tag[:4]!r}")

    def is_matrix_trc(self) -> bool:
        """Colorants and curves present and nothing that a CMM would prefer (A2B* tables take precedence)."""
        needed = {b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC", b"gTRC", b"bTRC"}
        return needed <= self.tags.keys() and not any(s[:3] == b"A2B" for s in self.tags) and self.pcs == b"XYZ "


def _is_srgb(colorants: np.ndarray, curves: tuple[Curve, ...]) -> bool:
    """The profile's colorants and curves are sRGB's, within what profile makers' rounding explains (0.002 in XYZ;
    0.001 in linear light, under a quarter of an 8-bit code anywhere on the curve)."""
    if not np.allclose(colorants, SRGB_TO_XYZ_D50, atol=2e-3, rtol=0):
        return False
    x = np.linspace(0.0, 1.0, 1025)
    reference = srgb_decode(x)
    return all(np.max(np.abs(curve(x) - reference)) < 1e-3 for curve in curves)


def _from_icc(icc: bytes) -> Conversion | None:
    profile = _Profile(icc)
    if profile.colour_space == b"GRAY":
        return None  # grey stays grey: the model sees the same values in any grey space, and gives them back
    if profile.colour_space != b"RGB ":
        return None  # the pixels handed over are RGB made by the decoder, not data of this (CMYK, Lab) profile
    if profile.device_class in (b"link", b"abst", b"nmcl"):
        raise ProfileError(f"an ICC profile of class {profile.device_class!r} cannot describe an image")
    name = profile.description() or "embedded ICC profile"
    if not profile.is_matrix_trc():
        return CmsConversion(name, icc)
    try:
        colorants = np.stack([profile.xyz(s) for s in (b"rXYZ", b"gXYZ", b"bXYZ")], axis=1)
        curves = tuple(profile.curve(s) for s in (b"rTRC", b"gTRC", b"bTRC"))
        if abs(np.linalg.det(colorants)) < 1e-6:
            raise ProfileError(f"the colorants of {name!r} are not independent")
    except ProfileError:
        return CmsConversion(name, icc)  # tags we do not read: LittleCMS may, or says why not
    if _is_srgb(colorants, curves):
        return None
    return MatrixConversion(name, curves, colorants)


def adobe_rgb_1998() -> MatrixConversion:
    """Adobe RGB (1998) by its published primaries and gamma, for files that say so only in EXIF."""
    return MatrixConversion("Adobe RGB (1998)", (gamma_curve(ADOBE_RGB_GAMMA),) * 3, ADOBE_RGB_TO_XYZ_D50)


@functools.lru_cache(maxsize=32)
def working_space(icc: bytes | None, adobe_rgb: bool = False) -> Conversion | None:
    """The conversion between a colour image's own space and sRGB, or None when none is needed.

    None: no profile and no Adobe RGB EXIF tag (sRGB is assumed, as browsers do); a profile that is sRGB (judged by
    its colorants and curves, not by its name); a grey profile (grey stays grey); a profile of another colour
    space (CMYK, Lab), whose pixels reach the model already converted to RGB by the decoder.
    An embedded profile wins over the EXIF tag. Raises ProfileError for a profile that no one can read.
    Cached (so `icc` must be bytes, hashable): images of an archive share a handful of profiles, and a Conversion
    keeps its tables.
    """
    if icc:
        try:
            return _from_icc(icc)
        except struct.error:
            raise ProfileError("truncated ICC profile") from None
    return adobe_rgb_1998() if adobe_rgb else None


# --- CIELAB and CIEDE2000 ------------------------------------------------------------------------------------------

_LAB_EPSILON, _LAB_KAPPA = 216 / 24389, 24389 / 27
# Lab and CIEDE2000 run on flat bands of this many pixels in planar float32, so that their many array operations
# stay in cache (CIEDE2000 of 1M pixels: 61 ms in bands of 32k, 111 ms in one piece).
_BAND = 1 << 15


def _linear_planes(rgb: np.ndarray) -> np.ndarray:
    """(n, 3) sRGB uint8/uint16/float [0, 1] -> (3, n) linear float32."""
    if rgb.dtype in (np.uint8, np.uint16):
        lut = _srgb_decode_lut(rgb.dtype.type)
        linear = np.empty((3, len(rgb)), np.float32)
        for c in range(3):
            np.take(lut, rgb[:, c], out=linear[c])
        return linear
    v = np.clip(rgb.T.astype(np.float32), 0.0, 1.0)
    return np.where(v <= 0.04045, v / np.float32(12.92), ((v + np.float32(0.055)) / np.float32(1.055)) ** 2.4)


def _lab_f(t: np.ndarray) -> np.ndarray:
    """CIELAB's f(t): a cube root, linear below (6/29)^3. Photographs have few pixels that dark, so the linear part is
    patched in where needed (np.where over every value cost as much as the cube root itself)."""
    f = np.cbrt(t)
    dark = t <= _LAB_EPSILON
    if dark.any():
        f[dark] = (np.float32(_LAB_KAPPA) * t[dark] + 16) / 116
    return f


_XYZ_OVER_WHITE = (SRGB_TO_XYZ_D65 / SRGB_TO_XYZ_D65.sum(axis=1, keepdims=True)).astype(np.float32)


def _lab_planes(rgb: np.ndarray) -> np.ndarray:
    """(n, 3) sRGB -> (3, n) float32 L*, a*, b*."""
    f = _lab_f(_XYZ_OVER_WHITE @ _linear_planes(rgb))  # f(X/Xn), f(Y/Yn), f(Z/Zn)
    lab = np.empty_like(f)
    np.multiply(f[1], 116, out=lab[0])
    lab[0] -= 16
    np.subtract(f[0], f[1], out=lab[1])
    lab[1] *= 500
    np.subtract(f[1], f[2], out=lab[2])
    lab[2] *= 200
    return lab


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB (uint8, uint16 or float in [0, 1]) -> (..., 3) float32 CIELAB, white D65 (sRGB white is L 100,
    a = b = 0: colour differences are measured inside the working space, with no adaptation)."""
    rgb = np.asarray(rgb)
    flat = rgb.reshape(-1, 3)
    out = np.empty(flat.shape, np.float32)
    for start in range(0, len(flat), _BAND):
        out[start:start + _BAND] = _lab_planes(flat[start:start + _BAND]).T
    return out.reshape(rgb.shape)


def srgb_to_lightness(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB -> (...) float32 L* alone (cheaper than srgb_to_lab when chroma does not matter)."""
    rgb = np.asarray(rgb)
    flat = rgb.reshape(-1, 3)
    out = np.empty(len(flat), np.float32)
    for start in range(0, len(flat), _BAND):
        out[start:start + _BAND] = 116 * _lab_f(_XYZ_OVER_WHITE[1] @ _linear_planes(flat[start:start + _BAND])) - 16
    return out.reshape(rgb.shape[:-1])


def srgb_delta_e2000(rgb1: np.ndarray, rgb2: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB pairs of one shape (any of uint8, uint16, float [0, 1]) -> (...) float32 CIEDE2000:
    srgb_to_lab and delta_e2000 band by band, without the interleaved Lab arrays in between."""
    rgb1, rgb2 = np.asarray(rgb1), np.asarray(rgb2)
    if rgb1.shape != rgb2.shape or rgb1.shape[-1:] != (3,):
        raise ValueError(f"need two (..., 3) sRGB arrays of one shape, got {rgb1.shape} and {rgb2.shape}")
    flat1, flat2 = rgb1.reshape(-1, 3), rgb2.reshape(-1, 3)
    out = np.empty(len(flat1), np.float32)
    for start in range(0, len(flat1), _BAND):
        band = slice(start, start + _BAND)
        out[band] = _de2000_planar(*_lab_planes(flat1[band]), *_lab_planes(flat2[band]))
    return out.reshape(rgb1.shape[:-1])


_PI, _TWO_PI, _DEG = np.float32(np.pi), np.float32(2 * np.pi), np.float32(np.pi / 180)
_25_POW_7 = np.float32(25.0 ** 7)


def delta_e2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """(..., 3) CIELAB pairs (broadcast) -> (...) float32 CIEDE2000 (kL = kC = kH = 1), following Sharma, Wu & Dalal
    (2005), "The CIEDE2000 color-difference formula: implementation notes, supplementary test data, and mathematical
    observations", including its conventions for hues of grey and for hues exactly 180 degrees apart."""
    lab1 = np.asarray(lab1, np.float32)
    lab2 = np.asarray(lab2, np.float32)
    shape = np.broadcast_shapes(lab1.shape, lab2.shape)
    if shape[-1:] != (3,):
        raise ValueError(f"need (..., 3) CIELAB arrays, got {lab1.shape} and {lab2.shape}")
    flat1 = np.broadcast_to(lab1, shape).reshape(-1, 3)
    flat2 = np.broadcast_to(lab2, shape).reshape(-1, 3)
    out = np.empty(len(flat1), np.float32)
    for start in range(0, len(flat1), _BAND):
        band = slice(start, start + _BAND)
        out[band] = _de2000_planar(*flat1[band].T.copy(), *flat2[band].T.copy())
    return out.reshape(shape[:-1])


def _chroma_weight(c: np.ndarray) -> np.ndarray:
    """sqrt(C^7 / (C^7 + 25^7)), the chroma factor of G and of R_C."""
    c7 = c * c
    c7 *= c7 * c7 * c
    return np.sqrt(c7 / (c7 + _25_POW_7))


def _de2000_planar(l1, a1, b1, l2, a2, b2) -> np.ndarray:
    """CIEDE2000 of 1D float32 planes; in-place arithmetic and no masked assignment (np.where and boolean indexing
    cost 5-10x an arithmetic pass on mixed masks): conditions enter as 0/1 factors."""
    f = np.float32
    c_mean = np.sqrt(a1 * a1 + b1 * b1) + np.sqrt(a2 * a2 + b2 * b2)
    c_mean *= f(0.5)
    g = f(1.5) - f(0.5) * _chroma_weight(c_mean)  # 1 + G
    a1 = g * a1
    a2 = g * a2
    c1 = np.sqrt(a1 * a1 + b1 * b1)
    c2 = np.sqrt(a2 * a2 + b2 * b2)
    # h' in [0, 2 pi) without a modulo: atan2(-b, -a) + pi. Adding +0 turns b = -0.0 into +0.0, so that a hue on the
    # positive a axis is 0 (not 2 pi); a grey's hue (a' = b = 0) is then 0 as Sharma asks, though it never matters:
    # dH' is 0 whenever a chroma is, and the hue mean enters only through S_H and R_T, both multiplied by dH'.
    h1 = np.arctan2(-(b1 + f(0)), -a1)
    h1 += _PI
    h2 = np.arctan2(-(b2 + f(0)), -a2)
    h2 += _PI
    dh = h2 - h1
    # Hues exactly opposite are 180 degrees apart, "not more" (Sharma): decided by the exact cross product, since
    # float32 hue angles of such a pair can land on either side of pi.
    far = (np.abs(dh) > _PI) & (a1 * b2 != b1 * a2)
    h_mean = h1 + h2
    h_mean *= f(0.5)
    h_mean += far * _PI  # the mean on the shorter arc ...
    h_mean -= (h_mean >= _TWO_PI) * _TWO_PI  # ... in [0, 2 pi)
    d_big_h = np.sqrt(c1 * c2)
    d_big_h *= np.sin(dh * f(0.5))
    d_big_h *= f(2) - f(4) * far  # dh wrapped by -+2 pi: sin(dh / 2 -+ pi) = -sin(dh / 2)

    t = f(1) - f(0.17) * np.cos(h_mean - 30 * _DEG)
    t += f(0.24) * np.cos(2 * h_mean)
    t += f(0.32) * np.cos(3 * h_mean + 6 * _DEG)
    t -= f(0.20) * np.cos(4 * h_mean - 63 * _DEG)
    cp_mean = c1 + c2
    cp_mean *= f(0.5)
    x = h_mean - 275 * _DEG
    x *= f(1 / (25 * np.pi / 180))
    x *= x
    np.negative(x, out=x)
    r_t = np.exp(x)  # d_theta / 30 degrees
    r_t *= 60 * _DEG
    np.sin(r_t, out=r_t)  # sin(2 d_theta)
    r_t *= f(-2) * _chroma_weight(cp_mean)  # R_T = -sin(2 d_theta) R_C

    l_mean = l1 + l2
    l_mean *= f(0.5)
    l_mean -= f(50)
    l_mean *= l_mean  # (L' mean - 50)^2
    s_l = f(0.015) * l_mean / np.sqrt(f(20) + l_mean) + f(1)
    dl = l2 - l1
    dl /= s_l
    dc = c2 - c1
    dc /= f(1) + f(0.045) * cp_mean
    t *= cp_mean
    t *= f(0.015)
    t += f(1)  # S_H
    d_big_h /= t
    out = dl * dl
    out += dc * dc
    out += d_big_h * d_big_h
    r_t *= dc
    r_t *= d_big_h
    out += r_t
    np.maximum(out, 0, out=out)
    return np.sqrt(out, out=out)
