"""The table declarations hold together, and typed data references say what they name or what is wrong."""

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from pixelmill.tasks.core.errors import ConfigError
from pixelmill.tasks.core.tables import TABLES, DataRef, is_data_ref, parse_data_ref, table


@pytest.mark.parametrize("name", sorted(TABLES))
def test_each_declaration_names_columns_its_schema_has(name):
    decl = TABLES[name]
    columns = set(decl.schema.names)
    assert set(decl.key) <= columns
    assert {c for c in decl.ranking if c != "ok"} <= columns and ("ok" not in decl.ranking or "status" in columns)
    assert set(decl.legacy.values()) <= columns and not set(decl.legacy) & columns
    assert decl.option in ("--dataset", "--pairs", "--model") and decl.group and decl.make
    # a summary and its Markdown from an empty table and from one row: what `catalog show` prints
    row = {c: None for c in decl.schema.names} | {"status": "ok", "created_at": datetime.now(UTC)}
    for data in (decl.schema.empty_table(), pa.Table.from_pylist([row], schema=decl.schema)):
        summary = decl.summary(data)
        assert decl.markdown(summary, f"{name} table").startswith(f"## {name} table")


def test_head_tables_show_their_declared_columns():
    evaluations = TABLES["evaluations"]
    data = pa.Table.from_pylist([{"model": "m:v1", "source": "pairs:p", "item_id": "x", "psnr_y": 30.123456}],
                                schema=evaluations.schema)
    text = evaluations.markdown(evaluations.summary(data), "evaluations table")
    assert "| m:v1 | pairs:p |" in text and "| 30.12 |" in text and "evaluation_id" not in text


def test_legacy_columns_fold_into_the_new_ones():
    models = TABLES["models"]
    old = pa.Table.from_pylist([{"name": "a", "pairs_set": "photos"}, {"name": "b", "source": "pairs:x"}],
                               schema=models.read_schema())
    upgraded = models.upgrade(old)
    assert upgraded.schema == models.schema
    assert upgraded["source"].to_pylist() == ["photos", "pairs:x"]  # old bare names are kept as written


def test_unknown_table_lists_the_tables():
    with pytest.raises(ConfigError, match="unknown table 'imagez'") as info:
        table("imagez")
    assert "evaluations, images, models, pairs, predictions" in info.value.hint


@pytest.mark.parametrize("text,allowed,expected", [
    ("images:photos", ("images", "pairs"), DataRef("images", "photos")),
    ("pairs:photos-sr-x2", ("images", "pairs"), DataRef("pairs", "photos-sr-x2")),
    ("dataset:photos", ("images",), DataRef("images", "photos")),  # apply's old spelling
])
def test_typed_references(text, allowed, expected):
    ref = parse_data_ref(text, allowed)
    assert ref == expected and is_data_ref(text)
    assert str(ref) == f"{expected.table}:{expected.name}" and ref.what in ("data set", "paired set")


@pytest.mark.parametrize("text,allowed,message", [
    ("photos", ("images", "pairs"), "'photos' is not a typed data reference; give images:NAME or pairs:NAME"),
    ("pair:photos", ("images", "pairs"), "'pair:photos': unknown kind 'pair'; give images:NAME or pairs:NAME"),
    ("pairs:photos", ("images",), "'pairs:photos' is a paired set; this takes images:NAME"),
    ("images:", ("images", "pairs"), "'images:': no name after images:"),
])
def test_typed_reference_errors_show_the_spelling(text, allowed, message):
    with pytest.raises(ConfigError) as info:
        parse_data_ref(text, allowed)
    assert info.value.message == message


def test_urls_are_not_typed_references():
    for url in ("s3://bucket/x", "./photos", "file:///tmp/x", "memory://ws/bucket", "C:/photos"):
        assert not is_data_ref(url)
