"""The terminal progress bar is fed by the flows themselves: a real ingest and crappify on the test server,
rendered into a console that says it is a terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from pixelmill.flows.console import progress_bar, report_progress
from pixelmill.flows.crappify import run_crappify
from pixelmill.flows.ingest import ingest
from pixelmill.tasks.prep.crappify import CrappifyConfig
from pixelmill.tasks.prep.ingest import IngestConfig
from tests.helpers import make_image

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_ingest_and_crappify_drive_the_bar(tmp_path):
    photos, ws = tmp_path / "photos", str(tmp_path / "ws")
    photos.mkdir()
    for seed in range(3):
        make_image(64, 48, seed=seed).save(photos / f"p{seed}.png")
    out = io.StringIO()
    with progress_bar(Console(file=out, force_terminal=True, width=100)):
        ingest(str(photos), dataset="bar", workspace=ws, config=IngestConfig(shard_size=1))
        run_crappify("bar", CrappifyConfig(shard_size=2), workspace=ws)
    text = out.getvalue()
    assert "ingest bar: shards" in text and "3/3" in text
    assert "crappify bar-lesson7: shards" in text and "2/2" in text


def test_no_bar_when_not_a_terminal():
    out = io.StringIO()
    with progress_bar(Console(file=out, force_terminal=False)):
        report_progress("anything", 1, 2)
    assert out.getvalue() == ""
