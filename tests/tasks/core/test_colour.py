"""Colour management: CIEDE2000 against Sharma's published data, CIELAB of known colours, and conversions from ICC
profiles (matrix/TRC by our own code, checked against LittleCMS) to the sRGB working space and back."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms

from pixelmill.tasks.core.colour import (
    CmsConversion,
    MatrixConversion,
    ProfileError,
    d50_colorants,
    delta_e2000,
    srgb_delta_e2000,
    srgb_to_lab,
    srgb_to_lightness,
    working_space,
)
from tests.corpus import ADOBE_GAMMA, ADOBE_RGB_D50, matrix_profile, scene, to8

# Sharma, Wu & Dalal (2005), Table 1: (L1, a1, b1), (L2, a2, b2), dE00. A selection covering the hue-mean and
# hue-difference branches (pairs 7-16: grey, hues near and exactly 180 degrees apart), hue rotation, and lightness.
SHARMA = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0010), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0010, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.1736, 0.5854), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]

DISPLAY_P3_XY = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
D65_XY = (0.3127, 0.3290)
SRGB_PARA = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)  # the sRGB curve as ICC para function type 3


# ------------------------------------------------------------------ ICC profiles for the cases corpus.py has not

def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _para(kind: int, params) -> bytes:
    return b"para\0\0\0\0" + struct.pack(">HH", kind, 0) + b"".join(_s15(p) for p in params)


def _mft2_rgb_to_xyz(colorants: np.ndarray, gamma: float) -> bytes:
    """lut16 A2B0: gamma input tables, a 2-point grid holding the (linear) colorant matrix, identity outputs.
    PCS XYZ in lut16 is u1Fixed15: 1.0 = 32768."""
    grid = np.stack(np.meshgrid(*[np.array([0.0, 1.0])] * 3, indexing="ij"), -1).reshape(-1, 3)
    clut = np.clip(np.rint(grid @ colorants.T * 32768), 0, 65535).astype(">u2").tobytes()
    curve = np.rint(np.linspace(0, 1, 256) ** gamma * 65535).astype(">u2").tobytes()
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return (b"mft2\0\0\0\0" + bytes([3, 3, 2, 0]) + identity + struct.pack(">HH", 256, 2) + curve * 3 + clut
            + struct.pack(">HH", 0, 65535) * 3)


def icc(space: bytes, tags: list[tuple[bytes, bytes]], description: str = "pixelmill test") -> bytes:
    """An ICC v2.1 display profile (header, tag table, 4-byte aligned tag data)."""
    text = description.encode("ascii") + b"\0"
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 79), *tags]
    offset, entries, body = 132 + 12 * len(tags), b"", b""
    for signature, data in tags:
        entries += signature + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    size = offset + len(body)
    header = (struct.pack(">II", size, 0) + struct.pack(">I", 0x02100000) + b"mntr" + space + b"XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 28 + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + entries + body


def rgb_profile(colorants: np.ndarray, trc: bytes, extra: list[tuple[bytes, bytes]] = (), name: str = "test"):
    xyz = [b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in colorants[:, i]) for i in range(3)]
    return icc(b"RGB ", [(b"rXYZ", xyz[0]), (b"gXYZ", xyz[1]), (b"bXYZ", xyz[2]),
                         (b"rTRC", trc), (b"gTRC", trc), (b"bTRC", trc), *extra], name)


def lcms(profile: bytes, pixels: np.ndarray, to_srgb: bool = True) -> np.ndarray:
    src, dst = ImageCms.ImageCmsProfile(io.BytesIO(profile)), ImageCms.createProfile("sRGB")
    if not to_srgb:
        src, dst = dst, src
    transform = ImageCms.buildTransform(src, dst, "RGB", "RGB",
                                        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    return np.asarray(transform.apply(Image.fromarray(pixels))).astype(int)


@pytest.fixture(scope="module")
def adobe() -> tuple[bytes, MatrixConversion]:
    profile = matrix_profile(ADOBE_RGB_D50, ADOBE_GAMMA)
    return profile, working_space(profile)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return to8(scene(160, 120, seed=3))


# ------------------------------------------------------------------ CIELAB and CIEDE2000

def test_delta_e2000_matches_sharma_test_data():
    lab1 = np.array([p[0] for p in SHARMA])
    lab2 = np.array([p[1] for p in SHARMA])
    expected = np.array([p[2] for p in SHARMA])
    got = delta_e2000(lab1, lab2)
    assert got.dtype == np.float32 and got.shape == (len(SHARMA),)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(delta_e2000(lab2, lab1), expected, atol=1e-4)  # symmetric
    assert delta_e2000(lab1[0], lab1[0]) == 0


def test_srgb_to_lab_of_known_colours():
    rgb = np.array([[[255, 255, 255], [255, 0, 0], [0, 0, 0]]], np.uint8)
    lab = srgb_to_lab(rgb)
    assert lab.shape == (1, 3, 3) and lab.dtype == np.float32
    np.testing.assert_allclose(lab[0, 0], [100, 0, 0], atol=1e-3)
    np.testing.assert_allclose(lab[0, 1], [53.24, 80.09, 67.20], atol=0.01)
    np.testing.assert_allclose(lab[0, 2], [0, 0, 0], atol=1e-3)
    # the same colours as uint16 and as floats; L* alone agrees
    np.testing.assert_allclose(srgb_to_lab(rgb.astype(np.uint16) * 257), lab, atol=1e-4)
    np.testing.assert_allclose(srgb_to_lab(rgb / 255.0), lab, atol=1e-3)
    np.testing.assert_allclose(srgb_to_lightness(rgb), lab[..., 0], atol=1e-4)


def test_srgb_delta_e2000_is_lab_then_delta_e(photo):
    shifted = np.clip(photo.astype(int) + [12, 0, -5], 0, 255).astype(np.uint8)
    direct = delta_e2000(srgb_to_lab(photo), srgb_to_lab(shifted))
    np.testing.assert_allclose(srgb_delta_e2000(photo, shifted), direct, atol=1e-4)


# ------------------------------------------------------------------ working_space

def test_no_profile_or_an_srgb_profile_needs_no_conversion():
    assert working_space(None) is None
    assert working_space(b"") is None
    assert working_space(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()) is None
    # sRGB written by another maker: colorants rounded differently, the curve as a 1024-entry table
    srgb = d50_colorants(((0.64, 0.33), (0.30, 0.60), (0.15, 0.06)), D65_XY)
    x = np.linspace(0, 1, 1024)
    table = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    curv = b"curv\0\0\0\0" + struct.pack(">I", 1024) + np.rint(table * 65535).astype(">u2").tobytes()
    assert working_space(rgb_profile(np.round(srgb, 4), curv, name="sRGB IEC61966-2.1")) is None


def test_grey_profile_needs_no_conversion():
    gamma = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    grey = icc(b"GRAY", [(b"kTRC", gamma), (b"wtpt", b"XYZ \0\0\0\0" + _s15(0.9642) + _s15(1) + _s15(0.8249))])
    assert working_space(grey) is None


def test_adobe_rgb_from_exif_alone():
    conversion = working_space(None, adobe_rgb=True)
    assert isinstance(conversion, MatrixConversion) and conversion.name == "Adobe RGB (1998)"
    assert working_space(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(), adobe_rgb=True) is None


def test_garbage_profile_is_a_profile_error():
    with pytest.raises(ProfileError):
        working_space(b"not an icc profile at all, but long enough to have a header" * 4)


# ------------------------------------------------------------------ matrix/TRC conversions

def test_adobe_rgb_round_trip_and_colour_fidelity(adobe, photo):
    profile, conversion = adobe
    assert isinstance(conversion, MatrixConversion)
    assert conversion.name == "Adobe RGB (1998)-like, pixelmill test"
    # an Adobe RGB image whose colours sRGB can show: made from an sRGB one
    adobe8 = conversion.from_srgb(photo, np.uint8)
    assert adobe8.dtype == np.uint8 and adobe8.shape == photo.shape
    srgb16 = conversion.to_srgb(adobe8)
    assert srgb16.dtype == np.uint16 and srgb16.shape == photo.shape
    back = conversion.from_srgb(srgb16, np.uint8)
    assert np.abs(back.astype(int) - adobe8).max() <= 1
    # what a viewer shows: the sRGB colours we started from, to well under a just noticeable difference
    assert srgb_delta_e2000(photo, srgb16).mean() < 1
    # uint16 in, uint16 out: the round trip keeps 16-bit precision
    adobe16 = conversion.from_srgb(photo.astype(np.uint16) * 257, np.uint16)
    assert np.abs(conversion.to_srgb(adobe16).astype(int) - photo.astype(int) * 257).max() <= 16


def test_adobe_rgb_agrees_with_littlecms(adobe):
    profile, conversion = adobe
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    ours = np.rint(conversion.to_srgb(pixels) / 257).astype(int)
    assert np.abs(ours - lcms(profile, pixels)).max() <= 2
    assert np.abs(conversion.from_srgb(pixels, np.uint8).astype(int) - lcms(profile, pixels, to_srgb=False)).max() <= 2
    # the EXIF-only Adobe RGB (published primaries, gamma 563/256) is the same space
    exif = working_space(None, adobe_rgb=True).to_srgb(pixels).astype(int)
    assert np.abs(exif - conversion.to_srgb(pixels)).max() <= 64  # a quarter of an 8-bit code


def test_parametric_curve_profile_agrees_with_littlecms():
    """Display P3: its own primaries with the sRGB curve, written as a 'para' function (type 3)."""
    profile = rgb_profile(d50_colorants(DISPLAY_P3_XY, D65_XY), _para(3, SRGB_PARA), name="Display P3")
    conversion = working_space(profile)
    assert isinstance(conversion, MatrixConversion) and conversion.name == "Display P3"
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    assert np.abs(np.rint(conversion.to_srgb(pixels) / 257).astype(int) - lcms(profile, pixels)).max() <= 2
    assert np.abs(conversion.from_srgb(pixels, np.uint8).astype(int) - lcms(profile, pixels, False)).max() <= 2


def test_out_of_gamut_colours_are_clipped_to_srgb(adobe):
    _, conversion = adobe
    pure_green = np.array([[[0, 255, 0]]], np.uint8)  # Adobe RGB's green lies far outside sRGB
    out = conversion.to_srgb(pure_green)[0, 0]
    assert out[1] == 65535 and out[0] == 0 and out[2] == 0


def test_large_image_converts_in_row_bands(adobe):
    _, conversion = adobe
    tall = np.random.default_rng(2).integers(0, 65536, (600, 7, 3)).astype(np.uint16)  # bands of 256 rows
    whole = conversion.to_srgb(tall)
    np.testing.assert_array_equal(whole[300:400], conversion.to_srgb(tall[300:400]))


# ------------------------------------------------------------------ profiles built on tables: LittleCMS

def test_table_profile_goes_to_littlecms(adobe, photo):
    _, matrix = adobe
    colorants = np.array(ADOBE_RGB_D50).T
    with_tables = rgb_profile(colorants, b"curv\0\0\0\0" + struct.pack(">IH", 1, 563) + b"\0\0",
                              [(b"A2B0", _mft2_rgb_to_xyz(colorants, ADOBE_GAMMA))], name="Adobe RGB with tables")
    conversion = working_space(with_tables)
    assert isinstance(conversion, CmsConversion) and conversion.name == "Adobe RGB with tables"
    pixels = matrix.from_srgb(photo, np.uint8)  # colours inside sRGB: paths differ in how they clip the others
    out = conversion.to_srgb(pixels)
    assert out.dtype == np.uint16 and np.all(out % 257 == 0)  # 8-bit precision there
    # the tables say what the matrix says: LittleCMS's 8-bit result is the matrix path's, rounded
    assert np.abs(out.astype(int) // 257 - np.rint(matrix.to_srgb(pixels) / 257)).max() <= 1
    # uint16 in and out work too (rounded to 8 bits inside)
    back = conversion.from_srgb(out, np.uint16)
    assert back.dtype == np.uint16 and back.shape == pixels.shape
