"""The S3 server killed in the middle of an ingest and started again 30 s later on the same ports and data: the run
rides it out (storage retries, then task retries) and catalogs every file once."""

from __future__ import annotations

import time

import pytest

from pixelmill.tasks.core.catalog import Catalog
from tests.faults.driver import Cli, duplicates, raw_rows, record
from tests.helpers import make_image, noise_png
from tests.seaweed import SeaweedServer

pytestmark = [pytest.mark.slow, pytest.mark.s3]  # 75-90 s: a 30 s outage, then ~20 s for SeaweedFS to serve
FILES = 120
OUTAGE_SECONDS = 30


def jpeg(seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    make_image(w=96 + seed % 32, h=80, seed=seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_ingest_survives_the_s3_server_killed_and_restarted(prefect, tmp_path, monkeypatch):
    server = SeaweedServer(tmp_path / "seaweedfs")  # its own: the session's server serves other tests
    (tmp_path / "seaweedfs").mkdir()
    server.start()
    try:
        for key, value in server.environ().items():
            monkeypatch.setenv(key, value)  # this process reads the catalog back from the same server
        fs = server.client()
        fs.mkdir("outage")
        fs.pipe({f"outage/src/img{i:03d}.{'jpg' if i % 2 else 'png'}": jpeg(i) if i % 2 else noise_png(64, 48, i)
                 for i in range(FILES)})
        env = prefect.env(**server.environ(), PIXELMILL_STORAGE_RETRY_SECONDS="120")
        cli = Cli(["ingest", "s3://outage/src", "--dataset", "d", "--workspace", "s3://outage/ws", "--shard-size", "4"],
                  env, tmp_path / "ingest.log")

        def parts() -> int:
            fs.invalidate_cache()
            return len(fs.glob("outage/ws/catalog/images/d/*.parquet"))

        deadline = time.time() + 120
        while not parts() and cli.proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        done_before = parts()
        assert cli.proc.poll() is None and 0 < done_before < FILES / 4, "the outage must come mid-run"
        server.stop(kill=True)  # a crash, not a clean shutdown
        time.sleep(OUTAGE_SECONDS)
        assert cli.proc.poll() is None, cli.log.read_text()[-3000:]  # still waiting for storage
        server.start()

        code, out = cli.wait(timeout=300)
        assert code == 0, out[-3000:]
        rows = Catalog("s3://outage/ws").read("images", "d").to_pylist()
        assert len(rows) == FILES and {r["status"] for r in rows} == {"ok"}
        assert {r["uri"] for r in rows} == {f"s3://outage/src/img{i:03d}.{'jpg' if i % 2 else 'png'}"
                                            for i in range(FILES)}
        assert duplicates(raw_rows("s3://outage/ws", "images", "d"), "images") == 0
        assert "retrying in" in out  # it did meet the outage
        record("S3 server killed 30 s mid-ingest", rows_checked=len(rows), shards_done_before_outage=done_before,
               duplicates_found=0, missing=0)
    finally:
        server.stop()
