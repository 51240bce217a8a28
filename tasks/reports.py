"""Summaries of catalog tables as plain dicts and Markdown: the same text for the Prefect UI and the CLI."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc


def count_by(table: pa.Table, column: str) -> dict[str, int]:
    counts = Counter("-" if v is None else str(v) for v in table[column].to_pylist())
    return dict(sorted(counts.items()))


def images_summary(table: pa.Table, max_errors: int = 20) -> dict:
    """Counts by data set, status, format and split, plus the first errors (all of them stay in the catalog)."""
    errors = table.filter(pc.equal(table["status"], "error"))
    dup = pc.sum(pc.is_valid(table["duplicate_of"])).as_py() or 0
    return {
        "files": table.num_rows,
        "datasets": count_by(table, "dataset"),
        "status": count_by(table, "status"),
        "format": count_by(table, "format"),
        "split": count_by(table, "split"),
        "duplicates": dup,
        "errors": [(u, e) for u, e in zip(errors["uri"].to_pylist()[:max_errors],
                                          errors["error"].to_pylist()[:max_errors], strict=True)],
        "errors_total": errors.num_rows,
    }


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def images_markdown(summary: dict, title: str) -> str:
    parts = [f"## {title}", f"{summary['files']} files, {summary['duplicates']} duplicates flagged."]
    for key in ("datasets", "status", "format", "split"):
        parts.append(f"**{key}**\n\n" + markdown_table([key, "files"], [[k, v] for k, v in summary[key].items()]))
    if summary["errors"]:
        shown = len(summary["errors"])
        parts.append(f"**errors** ({shown} of {summary['errors_total']} shown; all are rows in the catalog)\n\n"
                     + markdown_table(["uri", "error"], [list(e) for e in summary["errors"]]))
    return "\n\n".join(parts)
