"""The catalog's tables, declared once: schema, key and ranking, what a group is, summary and the columns shown.

`catalog.py` reads and writes by these declarations, `pixelmill catalog show` and the flows' run checks
summarise by them: a new table is one `Table` here, nothing elsewhere branches on a table's name.

Typed data references live here too: `images:NAME` is the data set NAME (a group of the images table),
`pairs:NAME` the paired set NAME (a group of the pairs table). A command that takes either says which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from pixelmill.tasks.core import reports
from pixelmill.tasks.core.errors import ConfigError

UTC_TIME = pa.timestamp("us", tz="UTC")

IMAGES = pa.schema([
    ("dataset", pa.string()),
    ("uri", pa.string()),
    ("sha256", pa.string()),
    ("bytes", pa.int64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("format", pa.string()),
    ("mode", pa.string()),
    ("status", pa.string()),  # ok | error
    ("error", pa.string()),  # "<kind>: <message>", null when ok
    ("split", pa.string()),  # train | valid | test
    ("mask_uri", pa.string()),
    ("duplicate_of", pa.string()),  # uri of the first file with the same content
    ("source_version", pa.string()),  # ETag/mtime/CRC seen at ingest: how reruns spot unchanged files
    ("ingested_at", UTC_TIME),
])

PAIRS = pa.schema([
    ("pair_id", pa.string()),  # from image content, recipe hash and seed: the same pair on every rerun
    ("set_name", pa.string()),
    ("dataset", pa.string()),
    ("image_uri", pa.string()),
    ("image_sha256", pa.string()),
    ("split", pa.string()),
    ("recipe", pa.string()),
    ("recipe_hash", pa.string()),
    ("seed", pa.int64()),
    ("params", pa.string()),  # JSON: every random draw, so a pair can be explained and remade
    ("hr_uri", pa.string()),  # hr_kind copy: the PNG crappify wrote; source: the source image itself
    ("lr_uri", pa.string()),
    ("mask_uri", pa.string()),  # segmentation sets: the mask at the LR input's size (nearest neighbour)
    ("hr_width", pa.int32()),
    ("hr_height", pa.int32()),
    ("lr_width", pa.int32()),
    ("lr_height", pa.int32()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("created_at", UTC_TIME),
    # How the HR target is stored (tasks/core/pairs.py). Rows from before these columns read as copies.
    ("hr_kind", pa.string()),  # copy (null: written before references) | source (hr_uri is the source image)
    ("hr_sha256", pa.string()),  # of the bytes at hr_uri: a source's as ingest read them, a copy's as written
    ("hr_crop", pa.list_(pa.int32())),  # source: [left, top, right, bottom] taken after decoding; null: whole
    ("hr_bytes", pa.int64()),  # source: its size and version (ETag/mtime) at ingest, for a check without a read
    ("hr_version", pa.string()),
])

MODELS = pa.schema([
    ("name", pa.string()),
    ("version", pa.string()),  # v1, v2, ...
    ("uri", pa.string()),  # the version's folder: weights.safetensors, config.json, metadata.json
    ("arch", pa.string()),
    ("task", pa.string()),
    ("scale", pa.int32()),
    ("source", pa.string()),  # what it was trained on: pairs:NAME or images:NAME (a bare NAME before typed refs)
    ("recipe_hash", pa.string()),
    ("steps", pa.int64()),
    ("metrics", pa.string()),  # JSON: the last validation
    ("code_version", pa.string()),
    ("created_at", UTC_TIME),
])

EVALUATIONS = pa.schema([
    ("evaluation_id", pa.string()),  # one evaluation run: model version + source + split
    ("model", pa.string()),  # name:version
    ("source", pa.string()),  # what it was scored on: pairs:NAME or images:NAME (a bare NAME before typed refs)
    ("split", pa.string()),
    ("method", pa.string()),  # model | baseline (bicubic for SR, the input for same-size restoration)
    ("scope", pa.string()),  # image | mean | class
    ("item_id", pa.string()),  # the pair id (pairs:) or image URI (images:); null for scope mean/class
    ("psnr_y", pa.float64()),
    ("ssim_y", pa.float64()),
    ("psnr_rgb", pa.float64()),
    ("ssim_rgb", pa.float64()),
    ("images", pa.int64()),
    ("created_at", UTC_TIME),
    # segmentation: scope image/mean rows carry the three summary scores, scope class rows one class's
    ("miou", pa.float64()),
    ("global_acc", pa.float64()),
    ("mean_class_acc", pa.float64()),
    ("class_name", pa.string()),
    ("iou", pa.float64()),
    ("accuracy", pa.float64()),
])

PREDICTIONS = pa.schema([
    ("input_uri", pa.string()),
    ("input_sha256", pa.string()),  # null when the input could not be read
    ("input_version", pa.string()),  # ETag/mtime/CRC at listing (or the images table's source_version)
    ("input_bytes", pa.int64()),
    ("output_root", pa.string()),  # the --output URL: the same input applied to two places is two rows
    ("output_uri", pa.string()),
    ("overlay_uri", pa.string()),  # segmentation with --overlay
    ("model", pa.string()),
    ("model_version", pa.string()),
    ("task", pa.string()),  # restoration | colorize | segmentation
    ("input_width", pa.int32()),
    ("input_height", pa.int32()),
    ("output_width", pa.int32()),
    ("output_height", pa.int32()),
    ("tiles", pa.int32()),
    ("output_sha256", pa.string()),  # of the written file: `pixelmill lineage` finds an output copied elsewhere
    ("output_depth", pa.int32()),  # bits per channel written: 8 or 16
    ("notes", pa.string()),  # what the output format could not keep ("; "-joined), for the run's summary
    # checked without a reference (tasks/inference/checks.py); null for segmentation
    ("drift_mean", pa.float64()),  # CIEDE2000 between the input and the output reduced to the input's size
    ("drift_p95", pa.float64()),
    ("niqe_input", pa.float64()),  # NIQE (lower is more natural), input and output at the input's size
    ("niqe_output", pa.float64()),
    ("clipped", pa.float64()),  # fraction of output pixels at 0 or full scale in some channel, beyond the input's
    ("flag", pa.bool_()),  # a check crossed its threshold: a person should look
    ("flag_reason", pa.string()),
    ("seconds", pa.float64()),  # decode to written, this image alone
    ("status", pa.string()),  # ok | error
    ("error", pa.string()),  # "<kind>: <message>" (kinds of the images table, unsafe_name, write_failed)
    ("run_id", pa.string()),  # the Prefect flow run
    ("created_at", UTC_TIME),
])


@dataclass(frozen=True)
class Table:
    """One catalog table. Rows are grouped (a folder per group) by what `group` names."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]  # what one row stands for
    ranking: tuple[str, ...]  # how duplicates of a key rank, best last: "ok" means status == "ok", else a column
    group: str  # what a group is: "data set", "paired set", "model"
    option: str  # the CLI option that names a group: --dataset, --pairs, --model
    make: str  # how a group comes to be, for "there are none yet" hints
    summary: Callable[[pa.Table], dict]
    markdown: Callable[[dict, str], str]
    # Columns renamed since parts were first written: old name -> new name. Readers take the old column where
    # the new one is null, so a catalog written by an older version reads (and dedups) by the new names.
    legacy: dict[str, str] = field(default_factory=dict)

    def read_schema(self) -> pa.Schema:
        """The schema that reads old and new parts alike: the table's, plus its legacy columns."""
        extra = [pa.field(old, self.schema.field(new).type) for old, new in self.legacy.items()]
        return pa.schema([*self.schema, *extra])

    def upgrade(self, data: pa.Table) -> pa.Table:
        """Rows read with `read_schema` (or a selection of it) in the table's own columns, legacy ones folded in."""
        for old, new in self.legacy.items():
            if old not in data.column_names:
                continue
            if new in data.column_names:
                merged = pc.coalesce(data[new], data[old])
                data = data.set_column(data.column_names.index(new), new, merged)
            data = data.drop_columns([old])
        return data


def _head(columns: tuple[str, ...]) -> tuple[Callable, Callable]:
    return partial(reports.head_summary, columns=columns), reports.head_markdown


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("images", IMAGES, ("dataset", "uri"), ("ingested_at",), "data set", "--dataset",
          "run `pixelmill ingest SOURCE --dataset NAME` first", reports.images_summary, reports.images_markdown),
    Table("pairs", PAIRS, ("set_name", "pair_id"), ("ok", "created_at"), "paired set", "--pairs",
          "run `pixelmill crappify --dataset NAME` first", reports.pairs_summary, reports.pairs_markdown),
    Table("models", MODELS, ("name", "version"), ("created_at",), "model", "--model",
          "train one with `pixelmill train restoration`",
          *_head(("name", "version", "task", "arch", "scale", "source", "steps", "code_version")),
          legacy={"pairs_set": "source"}),
    Table("evaluations", EVALUATIONS, ("evaluation_id", "method", "scope", "item_id", "class_name"),
          ("created_at",), "model", "--model", "run `pixelmill evaluate MODEL --data pairs:NAME`",
          *_head(("model", "source", "split", "method", "scope", "item_id", "class_name", "psnr_y", "ssim_y",
                  "miou", "iou", "images")),
          legacy={"pairs_set": "source", "pair_id": "item_id"}),
    # the newest attempt wins: a changed input's new row, a retried write_failed, a --force rerun
    Table("predictions", PREDICTIONS, ("model", "model_version", "output_root", "input_uri"), ("created_at",),
          "model", "--model", "run `pixelmill apply MODEL --input ... --output ...` first",
          reports.predictions_summary, reports.predictions_markdown),
)}


def table(name: str) -> Table:
    if name not in TABLES:
        raise ConfigError(f"unknown table {name!r}", f"valid tables: {', '.join(sorted(TABLES))}")
    return TABLES[name]


# Typed data references: which table's group a name is.
DATA_TABLES = ("images", "pairs")
OLD_PREFIXES = {"dataset": "images"}  # apply's `--input dataset:NAME`, from before typed references


@dataclass(frozen=True)
class DataRef:
    table: str  # images | pairs
    name: str  # the group: a data set's or a paired set's name

    def __str__(self) -> str:
        return f"{self.table}:{self.name}"

    @property
    def what(self) -> str:
        return TABLES[self.table].group


def is_data_ref(text: str) -> bool:
    """Whether `text` is spelled as a typed reference (apply's --input is a URL otherwise)."""
    prefix = text.partition(":")[0]
    return ":" in text and (prefix in DATA_TABLES or prefix in OLD_PREFIXES)


def parse_data_ref(text: str, allowed: tuple[str, ...] = DATA_TABLES, default: str | None = None) -> DataRef:
    """`images:NAME` or `pairs:NAME` (`dataset:NAME` is the old spelling of `images:NAME`); a bare NAME is
    `default`'s group when a default is given, else an error that shows the spelling."""
    prefix, sep, name = text.partition(":")
    if not sep:
        prefix, name = default, text
    prefix = OLD_PREFIXES.get(prefix, prefix)
    examples = " or ".join(f"{t}:NAME" for t in allowed)
    if prefix in DATA_TABLES and prefix not in allowed:
        raise ConfigError(f"{text!r} is a {TABLES[prefix].group}; this takes {examples}",
                          "; ".join(f"{t}:NAME is a {TABLES[t].group} (`pixelmill catalog show {t}`)" for t in allowed))
    if prefix is None or prefix not in allowed:
        said = f"{text!r} is not a typed data reference" if not sep else f"{text!r}: unknown kind {prefix!r}"
        raise ConfigError(f"{said}; give {examples}",
                          "; ".join(f"{t}:NAME is a {TABLES[t].group} (`pixelmill catalog show {t}`)"
                                    for t in allowed))
    if not name:
        raise ConfigError(f"{text!r}: no name after {prefix}:", f"give {examples}")
    return DataRef(prefix, name)

