"""`pixelmill catalog sql`: the real command in its own process (no Prefect server), over a workspace whose groups
hold the duplicates overlapping runs leave: a readable table, JSON lines, one-line errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pixelmill.tasks.core.catalog import Catalog
from tests.flows.test_cli_errors import run_cli

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Data set `d`: a.png twice (an older ok row, a newer error row: the newer wins), b.png once."""
    ws = tmp_path_factory.mktemp("sql") / "ws"
    catalog = Catalog(str(ws))
    catalog.write_part("images", "d", "run1", [
        {"dataset": "d", "uri": "file:///a.png", "status": "ok", "ingested_at": T0},
        {"dataset": "d", "uri": "file:///b.png", "status": "ok", "ingested_at": T0}])
    catalog.write_part("images", "d", "run2", [
        {"dataset": "d", "uri": "file:///a.png", "status": "error", "error": "truncated: cut",
         "ingested_at": T0 + timedelta(seconds=1)}])
    return ws


def test_prints_a_table_each_key_once(ws):
    code, out, err, _ = run_cli(["catalog", "sql", "select uri, status from images order by uri",
                                 "--workspace", str(ws)], ws.parent)
    assert (code, err) == (0, [])
    assert out == ["uri            status", "-------------  ------", "file:///a.png  error", "file:///b.png  ok",
                   "(2 rows)"]


def test_json_lines_and_the_workspace_from_the_environment(ws, monkeypatch):
    monkeypatch.setenv("PIXELMILL_WORKSPACE", str(ws))
    code, out, err, _ = run_cli(["catalog", "sql", "select status, count(*) as n from images group by 1 order by 1",
                                 "--json"], ws.parent)
    assert (code, err) == (0, [])
    assert [json.loads(line) for line in out] == [{"status": "error", "n": 1}, {"status": "ok", "n": 1}]


def test_limit_says_what_it_left_out(ws):
    code, out, _, _ = run_cli(["catalog", "sql", "select * from range(5)", "--limit", "2", "--workspace", str(ws)],
                              ws.parent)
    assert code == 0 and out[-1] == "(5 rows, 3 not shown: --limit N or --json)" and len(out) == 5


@pytest.mark.parametrize(("query", "error"), [
    ("select nosuch from images", 'error: SQL: Binder Error: Referenced column "nosuch" not found in FROM clause!'),
    ("selec 1", 'error: SQL: Parser Error: syntax error at or near "selec"'),
])
def test_a_bad_query_is_one_line_and_a_hint(ws, query, error):
    code, out, err, _ = run_cli(["catalog", "sql", query, "--workspace", str(ws)], ws.parent)
    assert code == 1 and out == []
    assert err == [error, 'hint: the views are images, pairs, models, evaluations, predictions; their columns: '
                          'pixelmill catalog sql "describe images"']


def test_no_workspace(tmp_path):
    code, _, err, _ = run_cli(["catalog", "sql", "select 1", "--workspace", str(tmp_path / "none")], tmp_path)
    assert code == 1 and err[0] == f"error: no workspace at file://{tmp_path}/none"
