"""The crappify flow on a real Prefect server: local, memory and S3 storage, threads and Dask."""

import hashlib
import io

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pixelmill.flows.cli import app
from pixelmill.flows.crappify import run_crappify
from pixelmill.flows.ingest import ingest
from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import ConfigError
from pixelmill.tasks.prep.crappify import CrappifyConfig

pytestmark = pytest.mark.usefixtures("prefect_server")


def fill(url: str, n: int = 6) -> None:
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 255, (40 + 4 * i, 56, 3), np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        storage.write_bytes(storage.join(url, f"img{i}.png"), buf.getvalue())
    storage.write_bytes(storage.join(url, "broken.jpg"), b"\xff\xd8\xff\xe0 not really")


def fingerprint(ws: str, set_name: str) -> dict[str, str]:
    """pair_id -> hash of its LR and HR bytes: what must be identical across runs and runners."""
    rows = Catalog(ws).read("pairs", set_name).to_pylist()
    return {r["pair_id"]: hashlib.sha256(storage.read_bytes(r["lr_uri"]) + storage.read_bytes(r["hr_uri"])).hexdigest()
            for r in rows}


def test_memory_storage_and_rerun(memory_url):
    fill(f"{memory_url}/src")
    ws = f"{memory_url}/ws"
    ingest(f"{memory_url}/src", dataset="d", workspace=ws)
    first = run_crappify("d", CrappifyConfig(recipe="sr-x2", shard_size=2), workspace=ws)
    assert (first["made"], first["status"], first["set_name"]) == (6, {"ok": 6}, "d-sr-x2")
    again = run_crappify("d", CrappifyConfig(recipe="sr-x2", shard_size=2), workspace=ws)
    assert (again["made"], again["existing"], again["pairs"]) == (0, 6, 6)


@pytest.mark.slow  # measured 12 s on 2 shared, loaded cores
def test_dask_local_cluster_gives_the_same_pairs_as_threads(tmp_path):
    fill(str(tmp_path / "src"))
    ws = str(tmp_path / "ws")
    ingest(str(tmp_path / "src"), dataset="d", workspace=ws)
    cfg = {"recipe": "realistic", "shard_size": 2, "workers": 2}
    run_crappify("d", CrappifyConfig(name="threads", **cfg), workspace=ws)
    run_crappify("d", CrappifyConfig(name="dask", **cfg), workspace=ws, runner="dask")
    threads, dask = fingerprint(ws, "threads"), fingerprint(ws, "dask")
    assert len(threads) == 6 and threads == dask


def test_dask_refuses_a_memory_workspace(memory_url):
    with pytest.raises(ConfigError, match="memory:// workspace"):
        run_crappify("d", CrappifyConfig(), workspace=memory_url, runner="dask")


@pytest.mark.s3
def test_s3_storage(s3_bucket):
    fill(f"s3://{s3_bucket}/src")
    ws = f"s3://{s3_bucket}/ws"
    ingest(f"s3://{s3_bucket}/src", dataset="d", workspace=ws)
    summary = run_crappify("d", CrappifyConfig(recipe="lesson7", shard_size=4), workspace=ws)
    assert summary["status"] == {"ok": 6}
    rows = Catalog(ws).read("pairs", "d-lesson7").to_pylist()
    assert all(r["lr_uri"].startswith(f"s3://{s3_bucket}/ws/datasets/d-lesson7/") for r in rows)
    assert run_crappify("d", CrappifyConfig(recipe="lesson7"), workspace=ws)["made"] == 0


def test_gallery_artifact_and_cli(tmp_path):
    from prefect.artifacts import Artifact

    fill(str(tmp_path / "src"))
    ws = str(tmp_path / "ws")
    ingest(str(tmp_path / "src"), dataset="gal", workspace=ws)
    result = CliRunner().invoke(app, ["crappify", "--dataset", "gal", "--recipe", "watermark", "--workspace", ws])
    assert result.exit_code == 0, result.output
    assert "this run: 6 made, 0 already there" in result.output
    artifact = Artifact.get("crappify-gal-watermark")
    assert artifact.data.count("data:image/png;base64,") == 8  # 4 pairs x (input, target), 1:1 crops
    print(f"crappify gallery artifact: {len(artifact.data)} characters")
    assert len(artifact.data) < 400_000  # crops, not whole images
    listed = CliRunner().invoke(app, ["recipes"])
    assert listed.exit_code == 0 and "lesson7" in listed.output and "realistic" in listed.output
    bad = CliRunner().invoke(app, ["crappify", "--dataset", "gal", "--recipe", "nope", "--workspace", ws])
    assert bad.exit_code == 1 and "error: unknown recipe 'nope'" in bad.output and "hint:" in bad.output
