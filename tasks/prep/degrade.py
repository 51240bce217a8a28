"""Image degradations: fastai lesson 7's "crappify", grown into typed, reproducible ops.

Every op is a frozen pydantic model tagged by a literal `op`, so a recipe is plain data: YAML or JSON
in, the same canonical JSON out for hashing, and a bad config fails at load time naming the field.
`op.apply(img, rng, ctx)` returns the degraded image and the parameters it actually drew (JSON-able).
Images are 8-bit "RGB" or "L"; every op keeps the mode, except `grayscale(keep_channels=False)`.

Reproducibility: every random draw comes from the `numpy.random.Generator` passed in, in a fixed
order, so the same image, ops and seed give byte-identical pixels (`derive_seed` makes the seed).

Probability: every op has `p` (default 1). `apply_steps` flips one coin per step, always, and runs
the step when coin < p, so p=0 never runs and p=1 always does. `op.apply` alone always applies.

Chain context: `apply_steps` hands one `ctx` dict down the steps so an op can use what another drew.
Lesson 7 writes the JPEG quality on the image *before* saving at that quality, so that number must
exist before the JPEG step runs. Hence `apply_steps` draws the quality of every top-level `jpeg`
step of its list up front, and before each step sets `ctx["next_jpeg_quality"]` to the quality of
the first `jpeg` step at or after it (`watermark(text="quality")` writes that number), and hands a
`jpeg` step its own quality in `ctx["jpeg_quality"]`. A `jpeg` step leaves the bytes it encoded in
`ctx["jpeg_bytes"]`, so a recipe that ends in JPEG stores exactly those bytes instead of compressing
twice. Called alone (no ctx), `jpeg` draws its own quality.
"""

import hashlib
import io
import math
import string
import threading
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from pixelmill.tasks.core.images import DEFAULT_MAX_PIXELS

Params = dict[str, Any]
# A short side past this makes more pixels than ingest accepts in an image (10,000 for 100 MP).
MAX_SHORT_SIDE = math.isqrt(DEFAULT_MAX_PIXELS)
MAX_FACTOR = 64.0  # as modcrop's largest scale: beyond it a photo shrinks to a few pixels


# ---- typed config pieces -------------------------------------------------------------------------

def _as_pair(v: Any) -> Any:
    # YAML convenience: `quality: 30` means the fixed range (30, 30).
    return (v, v) if isinstance(v, int | float) and not isinstance(v, bool) else v


def _ordered(v: tuple) -> tuple:
    if v[0] > v[1]:
        raise ValueError(f"range must be (lo, hi) with lo <= hi, got {tuple(v)}")
    return v


def span(lo: float, hi: float, kind: type = float) -> Any:
    """The type of a `(lo, hi)` range whose ends lie in [lo, hi]; a single number means `(v, v)`."""
    end = Annotated[kind, Field(ge=lo, le=hi)]
    return Annotated[tuple[end, end], BeforeValidator(_as_pair), AfterValidator(_ordered)]


def _as_tuple(v: Any) -> Any:
    # One name means that choice always; a list means draw one of them.
    return (v,) if isinstance(v, str) else v


def choices(kind: Any) -> Any:
    return Annotated[tuple[kind, ...], BeforeValidator(_as_tuple), Field(min_length=1)]


def _odd(v: tuple[int, int]) -> tuple[int, int]:
    if v[0] % 2 == 0 or v[1] % 2 == 0:
        raise ValueError(f"kernel sizes must be odd, got {tuple(v)}")
    return v


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Method = Literal["bicubic", "bilinear", "area", "lanczos", "nearest"]
BlurKind = Literal["isotropic", "anisotropic"]
KernelSize = Annotated[span(1, 51, int), AfterValidator(_odd)]

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,  # PIL's box filter averages each source block: area interpolation
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


# ---- small helpers ---------------------------------------------------------------------------------

def _uniform(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1]))  # uniform(v, v) is exactly v


def _integer(rng: np.random.Generator, r: tuple[int, int]) -> int:
    return int(rng.integers(r[0], r[1] + 1))


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _to_array(img: Image.Image) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32)
    return a[..., None] if a.ndim == 2 else a  # (H, W, C) for "L" too


def _to_image(a: np.ndarray) -> Image.Image:
    a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    """Baseline JPEG with no metadata: the same pixels and quality always give the same bytes."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()


# ---- the ops ---------------------------------------------------------------------------------------

class Op(BaseModel):
    """Base of every degradation: frozen, strict about fields, with a probability `p`."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    p: Probability = 1.0  # probability that `apply_steps` runs this step

    def apply(self, img: Image.Image, rng: np.random.Generator,
              ctx: dict | None = None) -> tuple[Image.Image, Params]:
        raise NotImplementedError


class Downscale(Op):
    """Shrink by `factor` (output floor(size / factor)) or to a `short_side`, keeping the aspect.

    It never enlarges unless `allow_upscale`: a `short_side` above the image's own leaves its size as it
    is, and a `factor` must be above 1. Either way an output over the ingest pixel limit is refused.
    """

    op: Literal["downscale"] = "downscale"
    allow_upscale: bool = False  # before the sizes: their validators read it
    factor: float | None = Field(None, ge=1 / MAX_FACTOR, le=MAX_FACTOR)
    short_side: int | None = Field(None, ge=1, le=MAX_SHORT_SIDE)
    method: choices(Method) = ("bicubic",)

    @field_validator("factor")
    @classmethod
    def _factor_shrinks(cls, factor: float | None, info: ValidationInfo) -> float | None:
        if factor is not None and factor <= 1 and not info.data.get("allow_upscale"):
            raise ValueError(f"must be above 1 to shrink the image, got {factor:g} (with allow_upscale: true "
                             "a factor below 1 enlarges it)")
        return factor

    @model_validator(mode="after")
    def _exactly_one_size(self):
        if (self.factor is None) == (self.short_side is None):
            raise ValueError("downscale needs exactly one of `factor` or `short_side`")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_upscale(self, handler) -> dict:
        # Recipes written before `allow_upscale` existed must keep their canonical JSON, hence their hash.
        data = handler(self)
        if not self.allow_upscale:
            data.pop("allow_upscale", None)
        return data

    def output_size(self, w: int, h: int) -> tuple[int, int]:
        if self.factor is not None:
            size = max(1, int(w // self.factor)), max(1, int(h // self.factor))
        else:
            s = self.short_side if self.allow_upscale else min(self.short_side, w, h)
            size = (s, max(1, round(h * s / w))) if w <= h else (max(1, round(w * s / h)), s)
        if size[0] * size[1] > DEFAULT_MAX_PIXELS:
            raise ValueError(f"downscale would make a {w}x{h} image {size[0]}x{size[1]}, over the "
                             f"{DEFAULT_MAX_PIXELS:,} pixel limit")
        return size

    def apply(self, img, rng, ctx=None):
        method = _pick(rng, self.method)
        size = self.output_size(*img.size)
        return img.resize(size, _RESAMPLE[method]), {"method": method, "width": size[0], "height": size[1]}


class ModCrop(Op):
    """Crop right and bottom so both sides are multiples of `scale` (the super-resolution convention)."""

    op: Literal["modcrop"] = "modcrop"
    scale: int = Field(ge=1, le=64)

    def apply(self, img, rng, ctx=None):
        w, h = img.size
        cw, ch = w - w % self.scale, h - h % self.scale
        if cw == 0 or ch == 0:
            raise ValueError(f"a {w}x{h} image is smaller than the modcrop scale {self.scale}")
        return img.crop((0, 0, cw, ch)), {"width": cw, "height": ch}


class Jpeg(Op):
    """Encode as JPEG at a drawn quality and decode again: blocking, ringing, colour bleeding."""

    op: Literal["jpeg"] = "jpeg"
    quality: span(1, 100, int) = (30, 95)

    def draw_quality(self, rng: np.random.Generator) -> int:
        return _integer(rng, self.quality)

    def apply(self, img, rng, ctx=None):
        quality = ctx.pop("jpeg_quality", None) if ctx is not None else None
        if quality is None:
            quality = self.draw_quality(rng)
        data = encode_jpeg(img, quality)
        if ctx is not None:
            ctx["jpeg_bytes"] = data
        # Decoded lazily: when this is the last step (the usual case) only the size is ever read.
        out = Image.open(io.BytesIO(data))
        return (out if out.mode == img.mode else out.convert(img.mode)), {"quality": quality}


_ALPHANUMERIC = string.ascii_letters + string.digits


_fonts = threading.local()


def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's scalable default font (Pillow >= 10.1); loading it costs more than drawing a number.

    One cache per thread: a FreeType face must not be used by two threads at once.
    """
    cache = _fonts.__dict__.setdefault("by_size", {})
    if size not in cache:
        cache[size] = ImageFont.load_default(size=size)
    return cache[size]


class Watermark(Op):
    """Text blended onto the image at a random position.

    `text`: "random" (3-10 letters and digits), "quality" (the next JPEG step's quality, see the module
    docstring) or the literal text. `position`: "anywhere" keeps the text inside the image when it fits;
    "top_left" puts its origin in the top-left quarter, like fastai's crappify (text may run past it).
    """

    op: Literal["watermark"] = "watermark"
    text: str = Field("random", min_length=1, max_length=256)  # drawn on every image: a line, not a book
    size: span(4, 512, int) = (20, 60)
    opacity: span(0.0, 1.0) = (0.3, 0.9)
    color: Literal["white", "black", "random"] = "white"
    position: Literal["anywhere", "top_left"] = "anywhere"

    def _draw_text(self, rng: np.random.Generator, ctx: dict | None) -> str:
        if self.text == "random":
            length = _integer(rng, (3, 10))
            return "".join(_ALPHANUMERIC[i] for i in rng.integers(len(_ALPHANUMERIC), size=length))
        if self.text == "quality":
            quality = (ctx or {}).get("next_jpeg_quality")
            if quality is None:
                raise ValueError("watermark text='quality' needs a jpeg step after it in the same step list")
            return str(quality)
        return self.text

    def _draw_fill(self, rng: np.random.Generator, mode: str) -> tuple[int, ...]:
        if self.color == "random":
            rgb = tuple(int(c) for c in rng.integers(256, size=3))
        else:
            rgb = (255, 255, 255) if self.color == "white" else (0, 0, 0)
        return rgb if mode == "RGB" else (round(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]),)

    def apply(self, img, rng, ctx=None):
        text = self._draw_text(rng, ctx)
        size, opacity = _integer(rng, self.size), _uniform(rng, self.opacity)
        fill = self._draw_fill(rng, img.mode)
        font = _font(size)
        left, top, right, bottom = font.getbbox(text)  # relative to the drawing origin
        w, h = img.size
        if self.position == "top_left":
            x_max, y_max = w // 2, h // 2
        else:
            x_max, y_max = max(0, w - right), max(0, h - bottom)
        x, y = _integer(rng, (0, x_max)), _integer(rng, (0, y_max))
        alpha = round(255 * opacity)
        if alpha == 255:  # opaque: drawing straight on the image gives the same bytes without two full-size layers
            out = img.copy()
            ImageDraw.Draw(out).text((x, y), text, fill=fill, font=font)
        else:
            # The text is drawn as an alpha mask and blended with one solid colour: the same result as
            # alpha-compositing an RGBA text layer, and it works for "L" images unchanged.
            mask = Image.new("L", img.size, 0)
            ImageDraw.Draw(mask).text((x, y), text, fill=alpha, font=font)
            out = Image.composite(Image.new(img.mode, img.size, fill), img, mask)
        box = [x + left, y + top, x + right, y + bottom]  # every changed pixel lies inside
        return out, {"text": text, "size": size, "opacity": opacity, "fill": list(fill),
                     "x": x, "y": y, "box": box}


class GaussianNoise(Op):
    """Additive Gaussian noise; `sigma` in 0..255 units; with `gray_prob`, the same noise on all channels."""

    op: Literal["gaussian_noise"] = "gaussian_noise"
    sigma: span(0.0, 255.0) = (1.0, 30.0)
    gray_prob: Probability = 0.0

    def apply(self, img, rng, ctx=None):
        sigma, gray = _uniform(rng, self.sigma), bool(rng.random() < self.gray_prob)
        a = _to_array(img)
        h, w, c = a.shape
        noise = rng.normal(0.0, sigma, size=(h, w, 1 if gray else c)).astype(np.float32)
        return _to_image(a + noise), {"sigma": sigma, "gray": gray}


class PoissonNoise(Op):
    """Shot noise as in Real-ESRGAN: poisson(x * levels) / levels - x, times a drawn `scale`."""

    op: Literal["poisson_noise"] = "poisson_noise"
    scale: span(0.0, 20.0) = (0.05, 3.0)
    gray_prob: Probability = 0.0

    def apply(self, img, rng, ctx=None):
        scale, gray = _uniform(rng, self.scale), bool(rng.random() < self.gray_prob)
        x = _to_array(img) / 255.0
        # Real-ESRGAN counts photons in as many levels as the image uses, rounded up to a power of two.
        used = np.count_nonzero(np.bincount(np.asarray(img).ravel(), minlength=256))
        levels = 2.0 ** np.ceil(np.log2(max(used, 2)))
        if gray and x.shape[-1] == 3:
            x_noise = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]  # luma: one noise for all
        else:
            x_noise = x
        noise = rng.poisson(x_noise * levels) / levels - x_noise
        return _to_image((x + scale * noise) * 255.0), {"scale": scale, "gray": gray}


def gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    r = np.arange(size) - size // 2
    k = np.exp(-0.5 * (r / sigma) ** 2)
    return k / k.sum()


def anisotropic_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, rotation: float) -> np.ndarray:
    """A (size, size) Gaussian with axis sigmas `sigma_x`, `sigma_y`, rotated by `rotation` degrees."""
    t = np.deg2rad(rotation)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    inv_cov = np.linalg.inv(rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T)
    r = np.arange(size) - size // 2
    xy = np.stack(np.meshgrid(r, r), axis=-1)  # (size, size, 2) as (x, y)
    k = np.exp(-0.5 * np.einsum("...i,ij,...j->...", xy, inv_cov, xy))
    return k / k.sum()


def _reflect_pad(a: np.ndarray, r: int) -> np.ndarray:
    return np.pad(a, ((r, r), (r, r), (0, 0)), mode="reflect")  # keeps edges free of dark borders


def _convolve_separable(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    # k taps of shifted adds per axis: ~20 ms for a 500x500 RGB image with 21 taps.
    k = k.astype(np.float32)
    r, (h, w) = len(k) // 2, a.shape[:2]
    p = _reflect_pad(a, r)
    rows = sum(k[i] * p[i:i + h] for i in range(len(k)))
    return sum(k[i] * rows[:, i:i + w] for i in range(len(k)))


def _fft_size(n: int) -> int:
    # The FFT is several times faster on lengths with only the factors 2, 3 and 5.
    while True:
        m = n
        for f in (2, 3, 5):
            while m % f == 0:
                m //= f
        if m == 1:
            return n
        n += 1


def _convolve_fft(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    # A 2D kernel has size**2 taps; the FFT costs the same for any size (~30 ms at 500x500 RGB).
    r, (h, w) = k.shape[0] // 2, a.shape[:2]
    p = np.ascontiguousarray(_reflect_pad(a, r).transpose(2, 0, 1))  # (C, H, W): contiguous FFT axes
    shape = tuple(_fft_size(n) for n in p.shape[1:])  # zeros past the end never reach the part we keep
    spectrum = np.fft.rfft2(p, s=shape) * np.fft.rfft2(k.astype(np.float32), s=shape)
    full = np.fft.irfft2(spectrum, s=shape)
    return full[:, 2 * r:2 * r + h, 2 * r:2 * r + w].transpose(1, 2, 0)  # outputs free of wrap-around


class Blur(Op):
    """Gaussian blur, isotropic (`sigma`) or anisotropic (`sigma_x`, `sigma_y`, `rotation` in degrees)."""

    op: Literal["blur"] = "blur"
    kind: choices(BlurKind) = ("isotropic",)
    sigma: span(0.01, 50.0) = (0.2, 3.0)
    sigma_x: span(0.01, 50.0) = (0.2, 3.0)
    sigma_y: span(0.01, 50.0) = (0.2, 3.0)
    rotation: span(-180.0, 180.0) = (-180.0, 180.0)
    kernel_size: KernelSize = (7, 21)

    def apply(self, img, rng, ctx=None):
        kind = _pick(rng, self.kind)
        lo, hi = self.kernel_size
        size = lo + 2 * _integer(rng, (0, (hi - lo) // 2))  # odd sizes only
        a = _to_array(img)
        if kind == "isotropic":
            sigma = _uniform(rng, self.sigma)
            out = _convolve_separable(a, gaussian_kernel_1d(size, sigma))
            return _to_image(out), {"kind": kind, "kernel_size": size, "sigma": sigma}
        sx, sy, rot = _uniform(rng, self.sigma_x), _uniform(rng, self.sigma_y), _uniform(rng, self.rotation)
        out = _convolve_fft(a, anisotropic_gaussian_kernel(size, sx, sy, rot))
        params = {"kind": kind, "kernel_size": size, "sigma_x": sx, "sigma_y": sy, "rotation": rot}
        return _to_image(out), params


class Grayscale(Op):
    """ITU-R 601 luma (PIL's convert("L")); `keep_channels`: an RGB image stays RGB, 3 equal channels."""

    op: Literal["grayscale"] = "grayscale"
    keep_channels: bool = True  # a colorization model then sees the same 3-channel input it will get

    def apply(self, img, rng, ctx=None):
        gray = img.convert("L")
        return (gray.convert(img.mode) if self.keep_channels else gray), {}


class OneOf(Op):
    """Run exactly one of `options`, drawn uniformly (e.g. Gaussian *or* Poisson noise)."""

    op: Literal["one_of"] = "one_of"
    options: tuple["Degradation", ...] = Field(min_length=2)

    @model_validator(mode="after")
    def _check_options(self):
        for i, option in enumerate(self.options):
            if _writes_jpeg_quality(option):
                raise ValueError(f"options.{i}: watermark text 'quality' needs a jpeg step after it")
        return self

    def apply(self, img, rng, ctx=None):
        choice = int(rng.integers(len(self.options)))
        img, (step,) = apply_steps((self.options[choice],), img, rng, ctx)
        return img, {"choice": choice, "step": step}


class Chain(Op):
    """Steps in order, each with its own `p` (Real-ESRGAN: blur, resize, noise, JPEG, twice)."""

    op: Literal["chain"] = "chain"
    steps: tuple["Degradation", ...] = ()

    @model_validator(mode="after")
    def _check_steps(self):
        check_steps(self.steps)
        return self

    def apply(self, img, rng, ctx=None):
        img, steps = apply_steps(self.steps, img, rng, ctx)
        return img, {"steps": steps}


OPS = (Downscale, ModCrop, Jpeg, Watermark, GaussianNoise, PoissonNoise, Blur, Grayscale, OneOf, Chain)
Degradation = Annotated[Union[OPS], Field(discriminator="op")]  # noqa: UP007 (a tuple of types, not `|`)
OneOf.model_rebuild()
Chain.model_rebuild()
OP_NAMES = tuple(op.model_fields["op"].default for op in OPS)


# ---- running steps ---------------------------------------------------------------------------------

def _writes_jpeg_quality(step: Op) -> bool:
    return isinstance(step, Watermark) and step.text == "quality"


def check_steps(steps: Sequence[Op], field: str = "steps") -> None:
    """Refuse, at config time, a step list whose `watermark(text="quality")` has no JPEG after it."""
    for i, step in enumerate(steps):
        if _writes_jpeg_quality(step) and not any(isinstance(later, Jpeg) for later in steps[i + 1:]):
            raise ValueError(f"{field}.{i}: watermark text 'quality' needs a jpeg step after it in its list")


def apply_steps(steps: Sequence[Op], img: Image.Image, rng: np.random.Generator,
                ctx: dict | None = None) -> tuple[Image.Image, list[Params]]:
    """Run `steps` in order, each with probability `p`; returns the image and one params dict per step."""
    ctx = {} if ctx is None else ctx
    planned = {i: step.draw_quality(rng) for i, step in enumerate(steps) if isinstance(step, Jpeg)}
    record = []
    for i, step in enumerate(steps):
        ctx["next_jpeg_quality"] = next((q for j, q in planned.items() if j >= i), None)
        if not rng.random() < step.p:
            record.append({"op": step.op, "applied": False})
            continue
        if i in planned:
            ctx["jpeg_quality"] = planned[i]
        img, params = step.apply(img, rng, ctx)
        record.append({"op": step.op, "applied": True, **params})
    return img, record


def derive_seed(image_sha256: str, recipe_hash: str, global_seed: int) -> int:
    """A 63-bit seed from the image content, the recipe and the run's seed: reruns redraw the same."""
    digest = hashlib.sha256(f"{image_sha256}\x00{recipe_hash}\x00{global_seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
