"""Each degradation keeps its promise (size, mode, range, the effect it names) and draws only from `rng`."""

import io

import numpy as np
import pytest
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from pixelmill.tasks.prep.degrade import (
    Blur,
    Chain,
    Degradation,
    Downscale,
    GaussianNoise,
    Grayscale,
    Jpeg,
    ModCrop,
    OneOf,
    PoissonNoise,
    Watermark,
    anisotropic_gaussian_kernel,
    apply_steps,
    derive_seed,
    encode_jpeg,
    gaussian_kernel_1d,
)
from tests.helpers import make_image


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# One instance of every op with its randomness switched on: shared by the generic tests below.
ALL_OPS = {
    "downscale": Downscale(factor=2, method=("bicubic", "area", "lanczos")),
    "modcrop": ModCrop(scale=8),
    "jpeg": Jpeg(quality=(20, 80)),
    "watermark": Watermark(text="random", size=(12, 30), color="random"),
    "gaussian_noise": GaussianNoise(sigma=(5, 20), gray_prob=0.5),
    "poisson_noise": PoissonNoise(scale=(0.5, 2), gray_prob=0.5),
    "blur_isotropic": Blur(kind="isotropic", sigma=(0.5, 2), kernel_size=(5, 11)),
    "blur_anisotropic": Blur(kind="anisotropic", kernel_size=(7, 15)),
    "grayscale": Grayscale(),
    "one_of": OneOf(options=(Jpeg(quality=(30, 60)), GaussianNoise(sigma=(3, 9)))),
    "chain": Chain(steps=(Blur(p=0.5), Downscale(factor=2), Jpeg(quality=(40, 90)))),
}
RANDOM_OPS = {"downscale", "jpeg", "watermark", "gaussian_noise", "poisson_noise", "blur_isotropic",
              "blur_anisotropic", "one_of", "chain"}


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("name", ALL_OPS)
def test_every_op_keeps_mode_and_dtype_and_reports_plain_params(name, mode):
    img = make_image(mode=mode)
    out, params = ALL_OPS[name].apply(img, rng())
    assert out.mode == mode
    assert np.asarray(out).dtype == np.uint8
    assert isinstance(params, dict) and plain_json(params)


def plain_json(value) -> bool:
    """Only str, int, float, bool, list and dict: numpy scalars would leak into the catalog otherwise."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain_json(v) for v in value)
    return type(value) in (str, int, float, bool)


@pytest.mark.parametrize("name", ALL_OPS)
def test_same_seed_gives_identical_pixels(name):
    img = make_image()
    a, pa = ALL_OPS[name].apply(img, rng(7))
    b, pb = ALL_OPS[name].apply(img, rng(7))
    assert a.tobytes() == b.tobytes() and pa == pb


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_different_seeds_draw_differently(name):
    img = make_image()
    draws = {repr(ALL_OPS[name].apply(img, rng(seed))[1]) for seed in range(6)}
    assert len(draws) > 1


# ---- downscale and modcrop ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["bicubic", "bilinear", "area", "lanczos", "nearest"])
def test_downscale_factor_is_exact(method):
    out, params = Downscale(factor=4, method=method).apply(make_image(480, 320), rng())
    assert out.size == (120, 80)
    assert params == {"method": method, "width": 120, "height": 80}


def test_modcrop_then_downscale_is_exact_for_odd_sizes():
    img = make_image(481, 323)
    hr, _ = ModCrop(scale=3).apply(img, rng())
    lr, _ = Downscale(factor=3).apply(hr, rng())
    assert hr.size == (480, 321)
    assert (lr.size[0] * 3, lr.size[1] * 3) == hr.size
    assert pixels(hr).tolist() == pixels(img)[:321, :480].tolist()  # crops right and bottom only


@pytest.mark.parametrize(("size", "expected"), [((200, 150), (128, 96)), ((150, 200), (96, 128)),
                                                ((201, 149), (130, 96)), ((96, 500), (96, 500))])
def test_downscale_short_side_keeps_aspect(size, expected):
    out, _ = Downscale(short_side=96, method="bilinear").apply(make_image(*size), rng())
    assert out.size == expected
    assert abs(out.size[0] / out.size[1] - size[0] / size[1]) < 1 / 96


@pytest.mark.parametrize("fields", [{}, {"factor": 2, "short_side": 96}, {"factor": 1.0},
                                    {"factor": 2, "method": "cubic"}, {"factor": 2, "method": []}])
def test_downscale_rejects_bad_configs(fields):
    with pytest.raises(ValidationError):
        Downscale(**fields)


def test_downscale_short_side_never_upscales_unless_asked():
    img = make_image(480, 320)
    out, params = Downscale(short_side=3000).apply(img, rng())
    assert out.size == (480, 320) and out.tobytes() == img.tobytes()  # not a 4500x3000 "LR"
    assert (params["width"], params["height"]) == (480, 320)
    out, _ = Downscale(short_side=3000, allow_upscale=True).apply(img, rng())
    assert out.size == (4500, 3000)


def test_downscale_factor_below_one_only_with_allow_upscale():
    with pytest.raises(ValidationError, match="must be above 1 to shrink") as info:
        Downscale(factor=0.5)
    assert info.value.errors()[0]["loc"] == ("factor",)
    out, _ = Downscale(factor=0.5, allow_upscale=True).apply(make_image(40, 30), rng())
    assert out.size == (80, 60)


@pytest.mark.parametrize(("fields", "message"), [
    ({"factor": 1e300}, "less than or equal to 64"),
    ({"factor": float("inf")}, "finite number"),
    ({"factor": float("nan")}, "finite number"),
    ({"factor": 1e-300, "allow_upscale": True}, "greater than or equal to 0.015625"),
    ({"short_side": 1_000_000}, "less than or equal to 10000"),
    ({"short_side": float("inf")}, "finite number"),
])
def test_downscale_sizes_are_bounded(fields, message):
    with pytest.raises(ValidationError, match=message) as info:
        Downscale(**fields)
    assert info.value.errors()[0]["loc"][0] == next(iter(fields))


def test_downscale_refuses_outputs_over_the_ingest_pixel_limit():
    op = Downscale(short_side=10_000, allow_upscale=True)
    assert op.output_size(100, 100) == (10_000, 10_000)  # exactly the limit
    with pytest.raises(ValueError, match="10100x10000, over the 100,000,000 pixel limit"):
        op.output_size(101, 100)  # checked before a pixel is allocated


@pytest.mark.parametrize("field", [("jpeg", "p"), ("gaussian_noise", "sigma"), ("gaussian_noise", "gray_prob"),
                                   ("poisson_noise", "scale"), ("blur", "sigma"), ("blur", "rotation"),
                                   ("watermark", "opacity")])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_is_finite(field, value):
    op, name = field
    with pytest.raises(ValidationError) as info:
        TypeAdapter(Degradation).validate_python({"op": op, name: value})
    assert info.value.errors()[0]["loc"][1] == name


def test_allow_upscale_is_in_the_definition_only_when_set():
    assert "allow_upscale" not in Downscale(factor=2).model_dump()  # recipes from before it keep their hash
    assert Downscale(factor=2, allow_upscale=True).model_dump()["allow_upscale"] is True
    assert TypeAdapter(Degradation).validate_python(Downscale(factor=2, allow_upscale=True).model_dump()).allow_upscale


def test_modcrop_refuses_an_image_smaller_than_the_scale():
    with pytest.raises(ValueError, match="smaller than the modcrop scale"):
        ModCrop(scale=16).apply(Image.new("RGB", (10, 40)), rng())


# ---- jpeg ----------------------------------------------------------------------------------------------

def test_jpeg_size_grows_with_quality():
    img = make_image()
    sizes = [len(encode_jpeg(img, q)) for q in (10, 50, 95)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_jpeg_round_trips_at_the_drawn_quality():
    img = make_image()
    out, params = Jpeg(quality=(10, 10)).apply(img, rng())
    assert params == {"quality": 10}
    assert out.size == img.size
    assert out.tobytes() == Image.open(io.BytesIO(encode_jpeg(img, 10))).tobytes()
    assert np.abs(pixels(out) - pixels(img)).mean() > 2  # quality 10 visibly damages the image


@pytest.mark.parametrize("quality", [(0, 50), (50, 101), (60, 40), "high"])
def test_jpeg_quality_is_validated_and_the_error_names_the_field(quality):
    with pytest.raises(ValidationError, match="quality"):
        Jpeg(quality=quality)


# ---- grayscale -----------------------------------------------------------------------------------------

def test_grayscale_gives_three_equal_channels_of_601_luma():
    img = make_image()
    out, _ = Grayscale().apply(img, rng())
    a = pixels(out)
    assert out.mode == "RGB"
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert (a[..., 0] == pixels(img.convert("L"))).all()


def test_grayscale_without_keep_channels_is_single_channel():
    out, _ = Grayscale(keep_channels=False).apply(make_image(), rng())
    assert out.mode == "L"


# ---- noise ---------------------------------------------------------------------------------------------

def flat(value: int = 128, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (200, 150), (value,) * 3 if mode == "RGB" else value)


def test_gaussian_noise_strength_is_proportional_to_sigma():
    diffs = {}
    for sigma in (5, 20):
        out, params = GaussianNoise(sigma=(sigma, sigma)).apply(flat(), rng())
        assert params == {"sigma": sigma, "gray": False}
        diffs[sigma] = np.abs(pixels(out) - 128).mean()
    # E|N(0, s)| = s * sqrt(2 / pi); rounding to integers blurs this a little at small sigma.
    assert diffs[20] == pytest.approx(20 * np.sqrt(2 / np.pi), rel=0.05)
    assert diffs[20] / diffs[5] == pytest.approx(4, rel=0.1)


@pytest.mark.parametrize("op", [GaussianNoise(sigma=(10, 10), gray_prob=1.0),
                                PoissonNoise(scale=(2, 2), gray_prob=1.0)])
def test_gray_noise_is_the_same_on_every_channel(op):
    out, params = op.apply(flat(), rng())
    a = pixels(out)
    assert params["gray"] is True
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert a.std() > 1


def test_colour_noise_differs_between_channels():
    a = pixels(GaussianNoise(sigma=(10, 10), gray_prob=0.0).apply(flat(), rng())[0])
    assert (a[..., 0] != a[..., 1]).mean() > 0.5


def test_poisson_noise_grows_with_scale_and_stays_in_range():
    img = make_image()
    diffs = []
    for scale in (0.5, 3.0):
        out, params = PoissonNoise(scale=(scale, scale)).apply(img, rng())
        assert params["scale"] == scale
        diffs.append(np.abs(pixels(out) - pixels(img)).mean())
    assert 0 < diffs[0] < diffs[1]


# ---- blur ----------------------------------------------------------------------------------------------

def high_frequency_energy(img: Image.Image) -> float:
    a = pixels(img.convert("L")).astype(np.float64)
    laplacian = 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
    return float((laplacian**2).mean())


@pytest.mark.parametrize("kind", ["isotropic", "anisotropic"])
def test_blur_removes_high_frequencies_and_keeps_size(kind):
    img = make_image()
    op = Blur(kind=kind, sigma=(2, 2), sigma_x=(2, 3), sigma_y=(1, 2), kernel_size=(13, 13))
    out, params = op.apply(img, rng())
    assert out.size == img.size and params["kind"] == kind and params["kernel_size"] == 13
    assert high_frequency_energy(out) < 0.2 * high_frequency_energy(img)


def test_tiny_sigma_blur_is_identity():
    img = make_image()
    for op in (Blur(kind="isotropic", sigma=0.1, kernel_size=7),
               Blur(kind="anisotropic", sigma_x=0.1, sigma_y=0.1, kernel_size=7)):
        out, _ = op.apply(img, rng())
        assert np.abs(pixels(out) - pixels(img)).max() <= 1


def test_blur_of_a_flat_image_is_flat_up_to_the_border():
    # Reflect padding: no dark frame creeps in from outside the image.
    for kind in ("isotropic", "anisotropic"):
        out, _ = Blur(kind=kind, kernel_size=(21, 21), sigma=(3, 3)).apply(flat(90), rng())
        assert np.abs(pixels(out) - 90).max() <= 1


def test_gaussian_kernels_are_normalised_and_shaped():
    k1 = gaussian_kernel_1d(9, 1.5)
    assert k1.sum() == pytest.approx(1) and (k1 == k1[::-1]).all() and k1.argmax() == 4
    k = anisotropic_gaussian_kernel(15, 3.0, 1.0, 20.0)
    assert k.shape == (15, 15) and k.sum() == pytest.approx(1)
    assert not np.allclose(k, np.rot90(k), atol=1e-4)
    assert np.allclose(k, k[::-1, ::-1])  # a Gaussian is point-symmetric whatever its rotation
    iso = anisotropic_gaussian_kernel(15, 2.0, 2.0, 33.0)
    assert np.allclose(iso, np.rot90(iso)) and np.allclose(iso, np.outer(*[gaussian_kernel_1d(15, 2.0)] * 2))


def test_anisotropic_kernel_rotation_turns_the_long_axis():
    wide = anisotropic_gaussian_kernel(15, 4.0, 1.0, 0.0)
    tall = anisotropic_gaussian_kernel(15, 4.0, 1.0, 90.0)
    assert np.allclose(wide, tall.T, atol=1e-6)
    assert wide[7, :].sum() > wide[:, 7].sum()  # spread along x (columns) when sigma_x is larger


@pytest.mark.parametrize("kernel_size", [(4, 9), (7, 8), (9, 7), (1, 53)])
def test_blur_kernel_size_must_be_an_ordered_odd_range(kernel_size):
    with pytest.raises(ValidationError, match="kernel_size"):
        Blur(kernel_size=kernel_size)


def test_blur_draws_only_odd_kernel_sizes_in_range():
    op = Blur(kernel_size=(7, 21))
    sizes = {op.apply(make_image(40, 30), rng(seed))[1]["kernel_size"] for seed in range(40)}
    assert sizes <= set(range(7, 22, 2)) and len(sizes) > 3


# ---- watermark -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_watermark_changes_pixels_only_inside_its_box(seed):
    img = make_image()
    out, params = Watermark(text="random", size=(14, 30), opacity=(0.6, 0.9)).apply(img, rng(seed))
    changed = np.argwhere((pixels(out) != pixels(img)).any(axis=-1))  # (row, col)
    x0, y0, x1, y1 = params["box"]
    assert len(changed) > 20
    assert changed[:, 1].min() >= x0 and changed[:, 1].max() < x1
    assert changed[:, 0].min() >= y0 and changed[:, 0].max() < y1
    assert 3 <= len(params["text"]) <= 10 and params["text"].isalnum()


def test_watermark_fits_inside_the_image_when_it_can():
    for seed in range(10):
        _, params = Watermark(text="pixelmill", size=(20, 20)).apply(make_image(), rng(seed))
        x0, y0, x1, y1 = params["box"]
        assert x0 >= 0 and y0 >= 0 and x1 <= 200 and y1 <= 150


def test_watermark_at_zero_opacity_changes_nothing():
    img = make_image()
    out, _ = Watermark(text="hello", opacity=(0, 0)).apply(img, rng())
    assert out.tobytes() == img.tobytes()


def test_watermark_literal_text_and_colour():
    _, params = Watermark(text="(c) 2024", color="black").apply(make_image(), rng())
    assert params["text"] == "(c) 2024" and params["fill"] == [0, 0, 0]


def test_watermark_quality_writes_the_next_jpeg_quality():
    steps = (Watermark(text="quality", size=(12, 12), opacity=(1, 1)), Jpeg(quality=(10, 70)))
    for seed in range(5):
        _, (mark, jpeg) = apply_steps(steps, make_image(), rng(seed))
        assert mark["text"] == str(jpeg["quality"]) and 10 <= jpeg["quality"] <= 70


def test_watermark_quality_without_a_later_jpeg_is_refused():
    with pytest.raises(ValueError, match="needs a jpeg step"):
        Watermark(text="quality").apply(make_image(), rng())
    with pytest.raises(ValidationError, match="needs a jpeg step"):
        Chain(steps=(Jpeg(), Watermark(text="quality")))


# ---- probabilities, chains and the union ---------------------------------------------------------------

def test_p_zero_never_applies_and_p_one_always_does():
    img = make_image(64, 48)
    for seed in range(30):
        out, (record,) = apply_steps((GaussianNoise(p=0.0),), img, rng(seed))
        assert record == {"op": "gaussian_noise", "applied": False} and out.tobytes() == img.tobytes()
        out, (record,) = apply_steps((GaussianNoise(p=1.0, sigma=(5, 10)),), img, rng(seed))
        assert record["applied"] and out.tobytes() != img.tobytes()


def test_p_half_applies_about_half_the_time():
    applied = [apply_steps((Grayscale(p=0.5),), flat(), rng(seed))[1][0]["applied"] for seed in range(200)]
    assert 70 < sum(applied) < 130


def test_one_of_runs_exactly_one_option_and_both_get_picked():
    op = OneOf(options=(Grayscale(), Jpeg(quality=(50, 50))))
    picks = set()
    for seed in range(20):
        _, params = op.apply(make_image(), rng(seed))
        picks.add(params["step"]["op"])
        assert params["step"]["op"] == ("grayscale", "jpeg")[params["choice"]]
    assert picks == {"grayscale", "jpeg"}


def test_nested_chain_records_every_step():
    op = Chain(steps=(Downscale(factor=2), Chain(steps=(Blur(), Jpeg(quality=(40, 40)))), GaussianNoise(p=0)))
    out, params = op.apply(make_image(), rng())
    assert out.size == (100, 75)
    assert [s["op"] for s in params["steps"]] == ["downscale", "chain", "gaussian_noise"]
    assert [s["op"] for s in params["steps"][1]["steps"]] == ["blur", "jpeg"]
    assert params["steps"][1]["steps"][1]["quality"] == 40


def test_degradation_union_parses_plain_data_and_rejects_unknowns():
    adapter = TypeAdapter(Degradation)
    assert adapter.validate_python({"op": "jpeg", "quality": 30}) == Jpeg(quality=(30, 30))
    downscale = adapter.validate_python({"op": "downscale", "factor": 2, "method": ["area", "nearest"]})
    assert downscale.method == ("area", "nearest")
    for bad in ({"op": "sharpen"}, {"quality": 30}, {"op": "jpeg", "qualty": 30}, {"op": "jpeg", "p": 1.5}):
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)


def test_ops_are_frozen():
    with pytest.raises(ValidationError):
        Jpeg().quality = (1, 2)


# ---- seeds ---------------------------------------------------------------------------------------------

def test_derive_seed_is_deterministic_63_bit_and_depends_on_each_input():
    base = derive_seed("ab" * 32, "0123456789abcdef", 0)
    assert base == derive_seed("ab" * 32, "0123456789abcdef", 0)
    assert 0 <= base < 2**63
    others = {derive_seed("cd" * 32, "0123456789abcdef", 0), derive_seed("ab" * 32, "fedcba9876543210", 0),
              derive_seed("ab" * 32, "0123456789abcdef", 1)}
    assert base not in others and len(others) == 3


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("color", ["white", "black", "random"])
def test_opaque_watermark_is_the_same_bytes_as_the_blended_one(mode, color):
    """Opacity 1 draws straight on the image (cheaper); it must equal the mask-and-blend path it skips."""
    from PIL import ImageDraw

    from pixelmill.tasks.prep.degrade import _font

    for seed in range(6):
        img = make_image().convert(mode)
        out, params = Watermark(text="random", size=(11, 40), opacity=(1, 1), color=color).apply(img, rng(seed))
        fill = tuple(params["fill"])
        mask = Image.new("L", img.size, 0)
        ImageDraw.Draw(mask).text((params["x"], params["y"]), params["text"], fill=255, font=_font(params["size"]))
        blended = Image.composite(Image.new(mode, img.size, fill), img, mask)
        assert out.mode == mode and out.tobytes() == blended.tobytes()
        assert out.tobytes() != img.tobytes()  # it did draw
