"""Archive fidelity, end to end: the archive-like corpus (tests/corpus.py) through `apply` and `enhance`.

An identity model (bicubic at scale 1), bicubic x2 and a real U-Net x2 in a real registry: every metadata field
survives, full-depth pixels come back within one code value, wide-gamut colours within 1 CIEDE2000, names mirror
with a suffix only on collision, an edited input replaces its output, each output says where it came from, and a
model built to shift colours gets its outputs flagged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pixelmill.flows.cli import app
from pixelmill.models.factory import build_model
from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.colour import delta_e2000, srgb_to_lab, working_space
from pixelmill.tasks.core.imageio import read_picture
from pixelmill.tasks.core.metadata import exif_fields, iptc_fields, provenance_of, xmp_fields
from pixelmill.tasks.inference.apply import ApplyConfig, apply_local
from tests.corpus import make_corpus

torch.set_num_threads(1)
runner = CliRunner()
KEPT_EXIF = ("Artist", "Copyright", "ImageDescription", "DateTime", "DateTimeOriginal", "Make", "Model")
LOSSLESS = {"png", "tiff"}
SIXTEEN = {"png", "tiff"}  # formats that hold 16 bits per channel


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("corpus") / "in"
    return folder, make_corpus(folder)


def register_shift(workspace: str) -> None:
    """Identity pixels, then +0.12 on red and -0.12 on blue: a model that tints everything it touches."""
    model = build_model({"arch": "bicubic", "scale": 1})
    with torch.no_grad():
        model.colour.bias.copy_(torch.tensor([0.12, 0.0, -0.12]))
    registry.save(workspace, "shift", model, {"task": "restoration", "scale": 1}, {"pairs_set": "none"})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> str:
    ws = str(tmp_path_factory.mktemp("fidelity") / "ws")
    for scale in (1, 2):
        registry.save(ws, f"bicubic{scale}", build_model({"arch": "bicubic", "scale": scale}),
                      {"task": "restoration", "scale": scale}, {"pairs_set": "none"})
    torch.manual_seed(0)
    unet = build_model({"arch": "unet-plain", "scale": 2, "base": 8, "depth": 2, "residual": True})
    registry.save(ws, "unet", unet, {"task": "restoration", "scale": 2}, {"pairs_set": "none"})
    register_shift(ws)
    return ws


def applied(workspace: str, source: Path, out: Path, model: str, **cfg) -> dict[str, dict]:
    """input name -> its predictions row, after one apply."""
    apply_local(workspace, model, str(source), str(out), ApplyConfig(**cfg), run_id=f"run-{model}")
    rows = Catalog(workspace).read("predictions", model.split("@")[0].split(":")[0]).to_pylist()
    prefix, root = storage.normalize_url(str(source)) + "/", storage.normalize_url(str(out))
    return {r["input_uri"].removeprefix(prefix): r for r in rows if r["output_root"] == root}


@pytest.fixture(scope="module", params=["png", "jpeg", "webp", "tiff"])
def identity_run(request, workspace, corpus, tmp_path_factory):
    folder, facts = corpus
    out = tmp_path_factory.mktemp(f"out-{request.param}")
    return request.param, facts, folder, applied(workspace, folder, out, "bicubic1", format=request.param)


def output_of(row: dict) -> tuple[bytes, object]:
    data = Path(row["output_uri"].removeprefix("file://")).read_bytes()
    return data, read_picture(data)


def test_every_input_gets_an_ok_output_named_like_it(identity_run):
    fmt, facts, _, rows = identity_run
    ext = {"png": "png", "jpeg": "jpg", "webp": "webp", "tiff": "tif"}[fmt]
    assert set(rows) == set(facts)
    bad = {name: r["error"] for name, r in rows.items() if r["status"] != "ok"}
    assert not bad
    names = {name: r["output_uri"].split("/out-")[1].split("/", 1)[1] for name, r in rows.items()}
    assert names["widegamut.png"] == f"widegamut.{ext}"
    assert names["grey16.png"] == f"grey16.{ext}"  # first by name keeps the plain name
    assert names["grey16.tif"].startswith("grey16-") and names["grey16.tif"].endswith(f".{ext}")
    assert names["dup/a.jpg"] == f"dup/a.{ext}"
    assert names["dup/a.tif"].startswith("dup/a-")
    assert len(set(names.values())) == len(names)


def test_metadata_survives_in_every_format(identity_run):
    fmt, facts, _, rows = identity_run
    for name, fact in facts.items():
        data, pic = output_of(rows[name])
        exif = exif_fields(pic.meta.exif)
        for key in KEPT_EXIF:
            if key in fact["exif"]:
                assert exif.get(key) == fact["exif"][key], (fmt, name, key, exif.get(key))
        if fact["exif"]:
            assert exif.get("Orientation", 1) == 1, (fmt, name)
        if "PixelXDimension" in exif:
            assert (exif["PixelXDimension"], exif["PixelYDimension"]) == pic.size, (fmt, name)
        if fact["xmp"].get("dc:title"):
            assert xmp_fields(pic.meta.xmp).get("dc:title") == fact["xmp"]["dc:title"], (fmt, name)
        if fact["iptc"] and fmt != "webp":
            assert iptc_fields(pic.meta.iptc).get("by-line") == fact["iptc"]["by-line"], (fmt, name)
        if fact["dpi"] and fmt != "webp":
            assert pic.meta.dpi is not None and abs(pic.meta.dpi[0] - fact["dpi"][0]) < 0.6, (fmt, name)


def test_whatever_a_format_cannot_hold_is_noted(identity_run):
    fmt, facts, _, rows = identity_run
    notes = {name: r["notes"] or "" for name, r in rows.items()}
    if fmt == "webp":
        assert "IPTC" in notes["photo.jpg"]
    if fmt in ("jpeg", "webp"):
        assert "16-bit" in notes["rgb16.png"] or "16 bit" in notes["rgb16.png"]
    if fmt == "jpeg":
        assert "alpha" in notes["soft_alpha.png"] or "transparen" in notes["soft_alpha.png"]
    if fmt in LOSSLESS:
        assert not notes["photo.jpg"] and not notes["grey16.png"] and not notes["dup/a.tif"], notes
    if fmt != "png":  # rgb16.png's PNG comment has no place outside PNG
        assert "text" in notes["rgb16.png"], notes["rgb16.png"]


def test_identity_gives_back_full_depth_pixels_and_alpha(identity_run):
    fmt, facts, _, rows = identity_run
    if fmt not in LOSSLESS:
        pytest.skip("lossy formats are checked by the colour test")
    for name, fact in facts.items():
        if not fact["lossless"]:
            continue
        _, pic = output_of(rows[name])
        assert pic.depth == fact["depth"], (name, pic.depth)
        assert rows[name]["output_depth"] == fact["depth"]
        want = fact["pixels"]
        got = pic.pixels
        assert got.shape == want.shape, (name, got.shape, want.shape)
        visible = slice(None) if fact["alpha"] is None else fact["alpha"] > 0
        diff = np.abs(got.astype(np.int64) - want.astype(np.int64))[visible]
        assert diff.max() <= 1, (name, int(diff.max()))
        if fact["has_alpha"]:
            assert pic.alpha is not None and np.abs(pic.alpha.astype(np.int64) - fact["alpha"]).max() <= 1


def lab(pixels: np.ndarray, icc: bytes | None) -> np.ndarray:
    conversion = working_space(icc)
    return srgb_to_lab(conversion.to_srgb(pixels) if conversion else pixels)


def test_wide_gamut_colours_come_back_within_one_delta_e(identity_run):
    fmt, facts, folder, rows = identity_run
    data, pic = output_of(rows["widegamut.png"])
    source = read_picture((folder / "widegamut.png").read_bytes())
    assert pic.meta.icc == source.meta.icc  # the output says which colours its numbers mean
    de = delta_e2000(lab(source.pixels, source.meta.icc), lab(pic.pixels, pic.meta.icc))
    limit = 1.0 if fmt in LOSSLESS else 2.5  # JPEG/WebP at quality 92 add their own error
    assert float(de.mean()) < limit, float(de.mean())
    assert rows["widegamut.png"]["flag"] is False or rows["widegamut.png"]["flag"] is None


def test_every_output_says_where_it_came_from(identity_run, workspace):
    fmt, facts, folder, rows = identity_run
    card = registry.resolve(workspace, "bicubic1")
    for name in facts:
        data, _ = output_of(rows[name])
        fields = provenance_of(data)
        assert fields.get("model") == "bicubic1" and fields.get("model_version") == card.version, (fmt, name)
        assert fields["weights_sha256"] == card.weights_sha256
        assert fields["input_sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert fields["input"] == name and fields["run_id"] == "run-bicubic1" and fields["pixelmill_version"]
        assert rows[name]["output_sha256"] == hashlib.sha256(data).hexdigest()


def test_super_resolution_scales_dpi_and_keeps_soft_edges_bright(workspace, corpus, tmp_path):
    folder, facts = corpus
    rows = applied(workspace, folder, tmp_path / "out-x2", "bicubic2")
    _, photo = output_of(rows["photo.jpg"])
    assert photo.size == (240, 320) and photo.meta.dpi and abs(photo.meta.dpi[0] - 600) < 1
    assert exif_fields(photo.meta.exif)["XResolution"] == 600
    _, cut = output_of(rows["soft_alpha.png"])
    assert cut.alpha is not None and cut.size == (256, 192)
    edge = (cut.alpha > 25) & (cut.alpha < 230)
    inner = cut.alpha == 255
    # black under the transparent part must not bleed into the edge: it is as bright as the shape it belongs to
    assert cut.pixels[edge].mean() > 0.8 * cut.pixels[inner].mean(), (cut.pixels[edge].mean(),
                                                                      cut.pixels[inner].mean())
    for name in ("rgb16.tif", "grey16.tif"):
        _, pic = output_of(rows[name])
        assert pic.depth == 16


def test_a_real_unet_keeps_depth_metadata_and_provenance(workspace, corpus, tmp_path):
    folder, facts = corpus
    rows = applied(workspace, folder, tmp_path / "out-unet", "unet", format="same")
    for name, fact in facts.items():
        assert rows[name]["status"] == "ok", rows[name]["error"]
        data, pic = output_of(rows[name])
        ext = rows[name]["output_uri"].rsplit(".", 1)[1]
        assert ext == (name.rsplit(".", 1)[1] if ext in ("jpg", "png", "tif") else "png") or name.endswith(
            (".heic", ".avif"))
        if fact["depth"] == 16:
            assert pic.depth == 16, name
        for key in ("Artist", "Copyright"):
            if key in fact["exif"]:
                assert exif_fields(pic.meta.exif).get(key) == fact["exif"][key], name
        assert provenance_of(data)["model"] == "unet"


def test_a_model_that_shifts_colours_is_flagged_and_identity_is_not(workspace, corpus, tmp_path):
    folder, facts = corpus
    shifted = applied(workspace, folder, tmp_path / "out-shift", "shift")
    flagged = {n for n, r in shifted.items() if r["flag"]}
    assert flagged >= {"photo.jpg", "widegamut.png", "rgb16.png", "dup/a.tif"}, flagged
    assert all("drift" in shifted[n]["flag_reason"] for n in flagged)
    same = applied(workspace, folder, tmp_path / "out-same", "bicubic1")
    assert not {n for n, r in same.items() if r["flag"]}
    assert all(r["drift_mean"] is not None and r["drift_mean"] < 1.0 for r in same.values())


def test_an_edited_input_replaces_its_output_and_another_format_leaves_no_stale_file(workspace, corpus, tmp_path):
    folder, facts = corpus
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.png").write_bytes((folder / "widegamut.png").read_bytes())
    (source / "b.png").write_bytes((folder / "soft_alpha.png").read_bytes())
    out = tmp_path / "out"
    applied(workspace, source, out, "bicubic2")
    first = (out / "a.png").read_bytes()
    (source / "a.png").write_bytes((folder / "rgb16.png").read_bytes())  # edited in place
    applied(workspace, source, out, "bicubic2")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert (out / "a.png").read_bytes() != first
    applied(workspace, source, out, "bicubic2", format="jpeg", force=True)
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.jpg"]


def test_enhance_keeps_what_apply_keeps(workspace, corpus, tmp_path):
    folder, facts = corpus
    out = tmp_path / "photo.tif"
    result = runner.invoke(app, ["enhance", "bicubic2", str(folder / "photo.jpg"), str(out), "--workspace",
                                 workspace])
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    pic = read_picture(data)
    assert pic.size == (240, 320)
    assert exif_fields(pic.meta.exif)["Artist"] == facts["photo.jpg"]["exif"]["Artist"]
    assert xmp_fields(pic.meta.xmp)["dc:title"] == facts["photo.jpg"]["xmp"]["dc:title"]
    assert provenance_of(data)["model"] == "bicubic2"
    sixteen = tmp_path / "rgb16.png"
    assert runner.invoke(app, ["enhance", "bicubic1", str(folder / "rgb16.png"), str(sixteen), "--workspace",
                               workspace]).exit_code == 0
    assert np.array_equal(read_picture(sixteen.read_bytes()).pixels, facts["rgb16.png"]["pixels"])


def test_ingest_catalogs_every_corpus_file_heic_and_avif_included(corpus, tmp_path):
    from tests.helpers import ingest_local

    folder, facts = corpus
    catalog = ingest_local(str(folder), str(tmp_path / "ws"), dataset="archive")
    rows = {r["uri"].rsplit("/in/", 1)[1]: r for r in catalog.read("images", "archive").to_pylist()}
    assert set(rows) == set(facts)
    for name, fact in facts.items():
        row = rows[name]
        assert row["status"] == "ok", (name, row["error"])
        assert (row["width"], row["height"]) == (fact["width"], fact["height"]), name  # upright
    assert rows["photo.heic"]["format"] == "HEIF" and rows["photo.avif"]["format"] == "AVIF"


def test_a_trained_model_keeps_the_archive_and_its_outputs_trace_back_to_training(corpus, tmp_path):
    """A model trained (briefly) through the real objective on its own paired set, applied to the corpus: the
    archive's depth and metadata survive, and `lineage` of an output reaches the images the model learned from."""
    from pixelmill.tasks.core.lineage import lineage_of_file
    from tests.tasks.core.test_lineage import build_trained

    folder, facts = corpus
    built = build_trained(tmp_path)
    rows = applied(built.ws, folder, tmp_path / "out-trained", "sr@production", format="tiff")
    assert all(r["status"] == "ok" for r in rows.values()), {n: r["error"] for n, r in rows.items()}
    data, pic = output_of(rows["rgb16.tif"])
    assert pic.depth == 16 and pic.size == (224, 160)
    assert exif_fields(pic.meta.exif)["Artist"] == "Scanner Operator"
    _, photo = output_of(rows["photo.jpg"])
    assert exif_fields(photo.meta.exif)["Copyright"] == facts["photo.jpg"]["exif"]["Copyright"]
    assert provenance_of(data)["model_version"] == "v1"
    lineage = lineage_of_file(built.ws, rows["rgb16.tif"]["output_uri"])
    assert lineage["model"]["ref"] == "sr:v1" and lineage["training"]["examples"]
    assert all(e["image_sha256_matches"] for e in lineage["training"]["examples"])
