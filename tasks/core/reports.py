"""Summaries of catalog tables as plain dicts and Markdown: the same text for the Prefect UI and the CLI."""

from __future__ import annotations

import base64
import io
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from pixelmill.tasks.core.images import busiest_window, crop, nearest_resize


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


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from names that may hold '.' or '_'."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def round_values(row: dict, digits: int = 4) -> dict:
    """Floats to `digits` significant digits, for tables people read (0.01751, not 0.017507145181298256)."""
    return {k: float(f"{v:.{digits}g}") if isinstance(v, float) else v for k, v in row.items()}


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


def pairs_summary(table: pa.Table, max_errors: int = 20) -> dict:
    errors = table.filter(pc.equal(table["status"], "error"))
    return {
        "pairs": table.num_rows,
        "status": count_by(table, "status"),
        "split": count_by(table, "split"),
        "recipe": count_by(table, "recipe"),
        "errors": [(u, e) for u, e in zip(errors["image_uri"].to_pylist()[:max_errors],
                                          errors["error"].to_pylist()[:max_errors], strict=True)],
        "errors_total": errors.num_rows,
    }


def pairs_markdown(summary: dict, title: str) -> str:
    parts = [f"## {title}", f"{summary['pairs']} pairs."]
    for key in ("status", "split", "recipe"):
        parts.append(f"**{key}**\n\n" + markdown_table([key, "pairs"], [[k, v] for k, v in summary[key].items()]))
    if summary["errors"]:
        parts.append(f"**errors** ({len(summary['errors'])} of {summary['errors_total']} shown)\n\n"
                     + markdown_table(["image", "error"], [list(e) for e in summary["errors"]]))
    return "\n\n".join(parts)


def head_summary(table: pa.Table, columns: tuple[str, ...], rows: int = 20) -> dict:
    """A table with no summary of its own: its row count and first rows (`columns` are the ones shown)."""
    return {"rows": table.num_rows, "columns": [c for c in columns if c in table.column_names],
            "head": table.slice(0, rows).to_pylist()}


def head_markdown(summary: dict, title: str) -> str:
    cols = summary["columns"]
    return f"## {title} ({summary['rows']} rows)\n\n" + markdown_table(
        cols, [[r[c] for c in cols] for r in map(round_values, summary["head"])])


def thumbnail_data_uri(data: bytes, height: int = 96) -> str:
    """A small JPEG as a data: URI, so a gallery lives inside one artifact (keep them few and small)."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        width = max(1, round(im.width * height / im.height))
        # nearest for upscaling tiny LR inputs, so their blockiness shows; antialiased for downscaling
        resample = Image.Resampling.NEAREST if im.height < height else Image.Resampling.LANCZOS
        buf = io.BytesIO()
        im.resize((width, height), resample).save(buf, "JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def png_bytes(arr) -> bytes:
    """An (H, W, 3) uint8 array as PNG bytes, for galleries."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def gallery_markdown(columns: list[str], rows: list[list[bytes]], height: int = 96) -> str:
    """A before/after table: one image per cell, columns like ["input", "target"]."""
    cells = [[f"![]({thumbnail_data_uri(b, height)})" for b in row] for row in rows]
    return markdown_table(columns, cells)


def crops_markdown(columns: list[str], rows: list[list[bytes]], captions: list[list[str]] | None = None) -> str:
    """A gallery of 1:1 crops: each cell holds the PNG bytes as they are (never resized) and its caption."""
    captions = captions or [[""] * len(row) for row in rows]
    cells = [[f"![](data:image/png;base64,{base64.b64encode(b).decode()}) {c}".rstrip() for b, c in
              zip(row, caps, strict=True)] for row, caps in zip(rows, captions, strict=True)]
    return markdown_table(columns, cells)


def side_by_side(pairs: list[tuple[bytes, bytes]], labels: list[str]) -> str:
    """1:1 crops of a smaller image (upscaled, nearest, to the larger's size) beside the larger one, where they
    differ most: a paired set's LR/HR, apply's input/output."""
    rows = []
    for small_bytes, large_bytes in pairs:
        with Image.open(io.BytesIO(small_bytes)) as small_im, Image.open(io.BytesIO(large_bytes)) as large_im:
            small, large = np.asarray(small_im.convert("RGB")), np.asarray(large_im.convert("RGB"))
        small_up = nearest_resize(small, *large.shape[:2])
        top, left = busiest_window(small_up, large)
        rows.append([png_bytes(np.ascontiguousarray(crop(a, top, left))) for a in (small_up, large)])
    return crops_markdown(labels, rows)


def pair_gallery(pairs: list[tuple[bytes, bytes]]) -> str:
    """Paired-set gallery: the LR input beside the HR target."""
    return side_by_side(pairs, ["input (LR, nearest to the target's size)", "target (HR)"])


def evaluation_gallery(result: dict, height: int = 128) -> str:
    """The gallery of an evaluation (tasks/training/runs.py): 1:1 crops with their scores when it has captions
    (restoration), else whole-image thumbnails (segmentation)."""
    from pixelmill.tasks.core import storage

    images = [[storage.read_bytes(u) for u in row] for row in result["gallery"]]
    if result.get("gallery_captions"):
        return crops_markdown(result["gallery_labels"], images, result["gallery_captions"])
    return gallery_markdown(result["gallery_labels"], images, height=height)


def predictions_summary(table: pa.Table, max_errors: int = 20) -> dict:
    """Rows by model version, status and output folder, the error kinds, the first errors, the flagged outputs,
    and what the output formats could not keep (each note once, with how many outputs it concerns)."""
    errors = table.filter(pc.equal(table["status"], "error"))
    versions = Counter(f"{m}:{v}" for m, v in zip(table["model"].to_pylist(), table["model_version"].to_pylist(),
                                                   strict=True))
    seconds = pc.sum(table["seconds"]).as_py() or 0.0
    flagged = table.filter(pc.fill_null(table["flag"], False)) if "flag" in table.column_names else table.slice(0, 0)
    notes = Counter(n for text in (table["notes"].to_pylist() if "notes" in table.column_names else [])
                    for n in (text or "").split("; ") if n)
    return {
        "rows": table.num_rows,
        "models": dict(sorted(versions.items())),
        "status": count_by(table, "status"),
        "outputs": count_by(table, "output_root"),
        "error_kinds": dict(sorted(Counter((e or "").split(":")[0] for e in errors["error"].to_pylist()).items())),
        "image_seconds": round(seconds, 3),
        "errors": [{"input_uri": u, "error": e} for u, e in
                   zip(errors["input_uri"].to_pylist()[:max_errors], errors["error"].to_pylist()[:max_errors],
                       strict=True)],
        "flagged": flagged.num_rows,
        # outputs per kind of reason (drift, clipped, niqe): one output may count under several
        "flag_reasons": dict(Counter(kind for text in flagged["flag_reason"].to_pylist()
                                     for kind in {r.split(":")[0] for r in (text or "").split("; ") if r})),
        "flagged_rows": [{"input_uri": r["input_uri"], "output_uri": r["output_uri"], "reason": r["flag_reason"]}
                         for r in flagged.select(["input_uri", "output_uri", "flag_reason"]).slice(0, max_errors)
                         .to_pylist()] if flagged.num_rows else [],
        "notes": dict(notes.most_common()),
    }


def predictions_markdown(summary: dict, title: str) -> str:
    parts = [f"## {title}", f"{summary['rows']} inputs, {summary.get('flagged', 0)} flagged."]
    for key, label in (("models", "model"), ("status", "status"), ("outputs", "output"), ("error_kinds", "error"),
                       ("notes", "note (what could not be kept as it was)")):
        if summary.get(key):
            table = markdown_table([label, "inputs"], [[k, v] for k, v in summary[key].items()])
            parts.append(f"**{label}**\n\n{table}")
    if summary.get("flagged_rows"):
        parts.append("**flagged**\n\n" + markdown_table(["input", "output", "reason"], [
            [r["input_uri"], r["output_uri"], r["reason"]] for r in summary["flagged_rows"]]))
    if summary["errors"]:
        parts.append("**errors**\n\n" + markdown_table(["input", "error"], [[e["input_uri"], e["error"]]
                                                                           for e in summary["errors"]]))
    return "\n\n".join(parts)
