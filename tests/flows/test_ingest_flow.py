"""The ingest flow on a real Prefect server, on every kind of storage: folder, memory, zip, tar and S3."""

import io
import shutil
import tarfile
import zipfile

import pytest
from typer.testing import CliRunner

from pixelmill.flows.cli import app
from pixelmill.flows.demo import check_catalog
from pixelmill.flows.ingest import ingest
from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.prep.ingest import IngestConfig
from pixelmill.tasks.prep.samples import sample_files

pytestmark = pytest.mark.usefixtures("prefect_server")


def assert_matches_samples(workspace: str, dataset: str, root_url: str) -> None:
    rows = Catalog(workspace).read("images", dataset).to_pylist()
    expected = [exp for _, exp in sample_files().values()]
    assert len(rows) == len(expected)
    assert check_catalog(rows, expected, root_url) == []


def test_local_folder_rerun_is_idempotent_and_incremental(sample_folder, tmp_path):
    root, _ = sample_folder
    src = tmp_path / "src"
    shutil.copytree(root, src)
    ws = str(tmp_path / "ws")
    first = ingest(str(src), dataset="samples", workspace=ws, config=IngestConfig(shard_size=5))
    assert first["new_or_changed"] == 19 and first["status"] == {"error": 4, "ok": 15}
    assert_matches_samples(ws, "samples", storage.normalize_url(str(src)))
    parts = Catalog(ws).part_uris("images", "samples")

    again = ingest(str(src), dataset="samples", workspace=ws, config=IngestConfig(shard_size=5))
    assert (again["new_or_changed"], again["unchanged"], again["files"]) == (0, 19, 19)
    assert Catalog(ws).part_uris("images", "samples") == parts

    shutil.copy(src / "photos" / "cat.png", src / "photos" / "cat-copy.png")
    third = ingest(str(src), dataset="samples", workspace=ws, config=IngestConfig(shard_size=5))
    assert (third["new_or_changed"], third["files"], third["duplicates"]) == (1, 20, 1)


def test_memory_source_and_workspace(memory_url):
    for name, (payload, _) in sample_files().items():
        storage.write_bytes(f"{memory_url}/bucket/{name}", payload)
    ws = f"{memory_url}/ws"
    summary = ingest(f"{memory_url}/bucket", workspace=ws)
    assert summary["dataset"] == "bucket" and summary["status"] == {"error": 4, "ok": 15}
    assert_matches_samples(ws, "bucket", f"{memory_url}/bucket")


def archive(kind: str) -> bytes:
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as zf:
            for name, (payload, _) in sample_files().items():
                zf.writestr(f"photos/{name}", payload)
    else:
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for name, (payload, _) in sample_files().items():
                info = tarfile.TarInfo(f"photos/{name}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archive_source(kind, tmp_path):
    path = tmp_path / f"archive.{kind}"
    path.write_bytes(archive(kind))
    ws = str(tmp_path / "ws")
    summary = ingest(str(path), workspace=ws)
    assert summary["dataset"] == "archive" and summary["status"] == {"error": 4, "ok": 15}
    assert_matches_samples(ws, "archive", storage.join(str(path), "photos"))
    assert ingest(str(path), workspace=ws)["unchanged"] == 19


@pytest.mark.s3
def test_s3_bucket_and_s3_zip_with_workspace_on_s3(s3_bucket):
    for name, (payload, _) in sample_files().items():
        storage.write_bytes(f"s3://{s3_bucket}/incoming/{name}", payload)
    storage.write_bytes(f"s3://{s3_bucket}/archive.zip", archive("zip"))
    ws = f"s3://{s3_bucket}/workspace"
    summary = ingest(f"s3://{s3_bucket}/incoming", dataset="incoming", workspace=ws)
    assert summary["status"] == {"error": 4, "ok": 15}
    assert_matches_samples(ws, "incoming", f"s3://{s3_bucket}/incoming")
    assert ingest(f"s3://{s3_bucket}/incoming", dataset="incoming", workspace=ws)["unchanged"] == 19
    ingest(f"s3://{s3_bucket}/archive.zip", dataset="zipped", workspace=ws)
    assert_matches_samples(ws, "zipped", storage.join(f"s3://{s3_bucket}/archive.zip", "photos"))


@pytest.mark.s3
def test_missing_bucket_fails_the_flow_with_a_clear_error(s3_server, tmp_path):
    from pixelmill.tasks.core.errors import StorageError

    with pytest.raises(StorageError, match="s3://pixelmill-no-such-bucket/x does not exist"):
        ingest("s3://pixelmill-no-such-bucket/x", dataset="x", workspace=str(tmp_path))


def test_summary_is_published_as_a_markdown_artifact(sample_folder, tmp_path):
    from prefect.artifacts import Artifact

    root, _ = sample_folder
    ingest(str(root), dataset="art-test", workspace=str(tmp_path))
    artifact = Artifact.get("ingest-art-test")
    assert artifact is not None and artifact.type == "markdown"
    assert "broken/truncated.jpg" in artifact.data and "| ok | 15 |" in artifact.data


# The demo's whole pipeline runs once in the suite: tests/flows/test_demo.py (its `demo_run` fixture).


runner = CliRunner()


def test_cli_ingest_and_catalog_show(sample_folder, tmp_path):
    root, _ = sample_folder
    ws = str(tmp_path / "ws")
    result = runner.invoke(app, ["ingest", str(root), "--dataset", "cli", "--workspace", ws, "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "cli: 19 files in the catalog, 15 ok, 4 errors" in result.output
    assert "this run: 19 new or changed" in result.output
    assert "next: pixelmill crappify --dataset cli --recipe lesson7 --workspace " + ws in result.output
    shown = runner.invoke(app, ["catalog", "show", "images", "--workspace", ws])
    assert shown.exit_code == 0 and "| cli | 19 |" in shown.output and "empty: the file has zero bytes" in shown.output
    one = runner.invoke(app, ["catalog", "show", "images", "--dataset", "cli", "--workspace", ws])
    assert one.exit_code == 0 and "## images table: data set cli" in one.output

    # the old spelling of --split-fractions still works, with one note; the fractions are the same as before
    again = runner.invoke(app, ["ingest", str(root), "--dataset", "old", "--workspace", ws, "--split", "0.8,0.1,0.1"])
    assert again.exit_code == 0, again.output
    assert [line for line in again.output.splitlines() if line.startswith("note:")] == [
        "note: --split is now --split-fractions for ingest (--split names one split in other commands)"]
    def splits(dataset: str) -> dict:
        return {r["uri"]: r["split"] for r in Catalog(ws).read("images", dataset).to_pylist()}

    assert splits("old") == splits("cli")


@pytest.mark.parametrize("args,message", [
    (["ingest", "/no/such/folder", "--workspace", "/tmp/pm-ws"], "error: file:///no/such/folder does not exist"),
    (["ingest", ".", "--split-fractions", "0.5,0.5,0.5"],
     "error: --split-fractions 0.5,0.5,0.5: give three fractions train,valid,test"),
    (["ingest", ".", "--split-fractions", "half"], "error: --split-fractions half: give three fractions train,valid,test"),
    (["ingest", ".", "--dataset", "../x"], "error: invalid dataset name '../x'"),
    (["catalog", "show", "nope", "--workspace", "/tmp/pm-ws"], "error: unknown table 'nope'"),
])
def test_cli_errors_are_one_line_and_a_hint(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert message in result.output
    assert "hint: " in result.output and "Traceback" not in result.output
