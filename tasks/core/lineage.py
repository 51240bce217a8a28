"""Lineage: where a file came from and what a model made, read from the catalog alone (no Prefect, no torch).

`lineage_of_file` walks back from an output (or a copy of one, or any cataloged file): the predictions row that
wrote it, the model version (card, aliases, promotions, evaluations), the data it was trained on (the paired set,
its recipe and drawn parameters) and the source images. `lineage_of_model` walks forward from a model reference
to the runs and outputs it made. `review_run` lists a run's flagged outputs. `render` and `render_review` turn
the dicts into text a person reads top to bottom; the CLI (`pixelmill lineage`, `pixelmill review`) prints them.

Every read is a filtered, column-selected scan of one table (pyarrow pushes the filter into the Parquet scan),
so a predictions table of 100k rows answers in well under a second: nothing here lists a whole table in Python.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.core.layout import Layout
from pixelmill.tasks.core.model_tasks import MODEL_TASKS
from pixelmill.tasks.core.tables import parse_data_ref

IMPORTED = "import:"  # the source of a model made elsewhere (`pixelmill models import FILE`)
EXAMPLES = 3  # pairs, images and outputs shown as examples: enough to follow a chain by hand, short to read
RUNS_SHOWN = 20  # a model applied every night for a year: the text shows the newest runs, the JSON all of them
CHECKS = ("drift_mean", "drift_p95", "niqe_input", "niqe_output", "clipped")
PREDICTION = ("input_uri", "input_sha256", "input_version", "input_bytes", "output_root", "output_uri",
              "overlay_uri", "output_sha256", "model", "model_version", "task", "input_width", "input_height",
              "output_width", "output_height", "output_depth", "tiles", "status", "error", "notes", "flag",
              "flag_reason", *CHECKS, "run_id", "created_at")
IMAGE = ("dataset", "uri", "sha256", "split", "status", "error", "width", "height", "format", "mode", "mask_uri",
         "duplicate_of", "ingested_at")
PAIR = ("set_name", "pair_id", "dataset", "split", "recipe", "recipe_hash", "seed", "params", "image_uri",
        "image_sha256", "hr_uri", "lr_uri", "mask_uri", "status", "error", "created_at", "hr_kind", "hr_crop",
        "hr_sha256")
EVALUATION = ("evaluation_id", "source", "split", "method", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "miou",
              "global_acc", "mean_class_acc", "images", "created_at")


# ---------------------------------------------------------------- small readers


def _jsonable(value: Any) -> Any:
    """Catalog values as JSON has them: times as ISO 8601 strings, containers walked."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _rows(data: pa.Table) -> list[dict]:
    return [_jsonable(row) for row in data.to_pylist()]


def _read(catalog: Catalog, table: str, filter: ds.Expression, columns: tuple[str, ...],
          group: str | None = None) -> pa.Table:
    """Matching rows of one table (or one group of it: an absent group reads as no rows), the columns asked for."""
    return catalog.read(table, group, columns=list(columns), filter=filter)


def _newest_first(data: pa.Table, prefer: pa.Array | None = None) -> pa.Table:
    """Rows sorted best first: `prefer` (a boolean per row) true first, then ok rows, then the newest."""
    keys = [("_ok", "descending")]
    data = data.append_column("_ok", pc.fill_null(pc.equal(data["status"], "ok"), False))
    if prefer is not None:
        data = data.append_column("_prefer", pc.fill_null(prefer, False))
        keys.insert(0, ("_prefer", "descending"))
    time_column = next(c for c in ("created_at", "ingested_at") if c in data.column_names)
    data = data.sort_by([*keys, (time_column, "descending")])
    return data.drop_columns([name for name, _ in keys])


def _any(*conditions: ds.Expression | None) -> ds.Expression | None:
    """The conditions that apply (a URI or sha256 may be unknown), or-ed; None when none does."""
    given = [c for c in conditions if c is not None]
    if not given:
        return None
    either = given[0]
    for condition in given[1:]:
        either = either | condition
    return either


def _equals(column: str, value: str | None) -> ds.Expression | None:
    return None if value is None else ds.field(column) == value


def _file_bytes(uri: str) -> bytes | None:
    """The file's bytes; None when there is no file (a deleted output is still found by its name)."""
    try:
        return storage.read_bytes(uri)
    except (PixelmillError, OSError):
        return None


def _provenance(data: bytes | None) -> dict[str, str] | None:
    """What pixelmill wrote into the file's own metadata (XMP pixelmill:* or PNG text), or None."""
    if data is None:
        return None
    from pixelmill.tasks.core.metadata import provenance_of  # Pillow: only when a file gets this far

    return provenance_of(data) or None


def _candidates(target: str) -> list[str]:
    """The URIs the catalog may hold for `target`: its canonical URL, and for a local path the one with links
    resolved (outputs are cataloged at the path the run was given, which may go through a link)."""
    uri = storage.normalize_url(target, archives=False)  # a relative path is taken from the current directory
    found = [uri]
    if uri.startswith("file://") and "::" not in uri:
        real = "file://" + os.path.realpath(uri[len("file://"):])
        found += [real] if real != uri else []
    return found


# ---------------------------------------------------------------- the chain's links


def _find_prediction(catalog: Catalog, where: ds.Expression, sha: str | None) -> dict | None:
    """The predictions row that wrote the file. Where several runs wrote the same name (two model versions into
    one output folder), the one whose recorded sha256 is the file's wins, then the newest."""
    found = _read(catalog, "predictions", where, PREDICTION)
    if found.num_rows == 0:
        return None
    same = pc.equal(found["output_sha256"], sha) if sha else None
    return _rows(_newest_first(found, same).slice(0, 1))[0]


def _find_image(catalog: Catalog, where: ds.Expression) -> tuple[dict, list[dict]] | None:
    """The images row of the file, and the other rows with the same content (duplicates, other data sets)."""
    found = _read(catalog, "images", where, IMAGE)
    if found.num_rows == 0:
        return None
    row = _rows(_newest_first(found).slice(0, 1))[0]
    others = []
    if row["sha256"]:
        same = _read(catalog, "images", ds.field("sha256") == row["sha256"], ("dataset", "uri"))
        others = [r for r in same.sort_by("uri").to_pylist() if r["uri"] != row["uri"]][:EXAMPLES]
    return row, others


def _find_pair(catalog: Catalog, candidates: list[str]) -> tuple[dict, str] | None:
    """The pairs row whose HR target, LR input or mask is the file."""
    found = _read(catalog, "pairs", ds.field("hr_uri").isin(candidates) | ds.field("lr_uri").isin(candidates)
                  | ds.field("mask_uri").isin(candidates), PAIR)
    if found.num_rows == 0:
        return None
    row = _rows(_newest_first(found).slice(0, 1))[0]
    role = next(f"pair_{k}" for k in ("hr", "lr", "mask") if row[f"{k}_uri"] in candidates)
    return _with_params(row), role


def _with_params(pair: dict) -> dict:
    params = pair.get("params")
    return pair | {"params": json.loads(params) if params else None}


def _prediction_by_provenance(catalog: Catalog, prov: dict[str, str]) -> dict | None:
    """The row the file's own provenance names: its model version and input (the run that wrote it first)."""
    if not (prov.get("model") and prov.get("model_version") and prov.get("input_uri")):
        return None
    found = _read(catalog, "predictions", (ds.field("model_version") == prov["model_version"])
                  & (ds.field("input_uri") == prov["input_uri"]), PREDICTION, group=prov["model"])
    if found.num_rows == 0:
        return None
    same_run = pc.equal(found["run_id"], prov["run_id"]) if prov.get("run_id") else None
    return _rows(_newest_first(found, same_run).slice(0, 1))[0]


def _input_image(catalog: Catalog, uri: str | None, sha: str | None) -> dict | None:
    """The images row the applied input (or a pair's original) was ingested as: by URI, else by content."""
    wanted = _any(_equals("uri", uri), _equals("sha256", sha))
    found = _read(catalog, "images", wanted, IMAGE) if wanted is not None else None
    if found is None or found.num_rows == 0:
        return None
    by_uri = pc.equal(found["uri"], uri) if uri else None
    row = _rows(_newest_first(found, by_uri).slice(0, 1))[0]
    return row | {"matched_by": "uri" if row["uri"] == uri else "sha256"}


def model_version(workspace: str, catalog: Catalog, name: str, version: str) -> dict:
    """The version's card, the aliases that point at it now, its promotions and its mean evaluation scores; a
    version whose folder is gone says so (`missing`) with what the models table still knows."""
    ref = f"{name}:{version}"
    base = {"ref": ref, "name": name, "version": version, "missing": False}
    try:
        card = registry.resolve(workspace, ref)
    except PixelmillError:
        known = _read(catalog, "models", ds.field("version") == version, ("name", "version", "uri", "arch", "task",
                      "scale", "source", "recipe_hash", "steps", "metrics", "code_version", "created_at"), group=name)
        row = _rows(known)[0] if known.num_rows else {}
        metrics = json.loads(row.pop("metrics", None) or "{}")
        model = base | {"missing": True, "uri": None, "task": None, "arch": None, "arch_kwargs": {}, "scale": None,
                        "source": None, "recipe_hash": None, "weights_sha256": None, "metrics": metrics,
                        "steps": None, "code_version": None, "created_at": None, "train_config": None} | row
    else:
        model = base | _jsonable(card.model_dump(mode="json", include={
            "uri", "task", "arch", "arch_kwargs", "scale", "source", "recipe_hash", "weights_sha256", "metrics",
            "steps", "code_version", "created_at", "train_config", "source_sha256", "licence"}))
    model["aliases"] = sorted(a for a, v in registry.aliases(workspace, name).items() if v == version)
    model["promotions"] = [p for p in registry.promotions(workspace, name)
                           if version in (p.get("version"), p.get("previous"))]
    model["evaluations"] = evaluations(catalog, ref, name)
    return model


def evaluations(catalog: Catalog, ref: str, name: str) -> list[dict]:
    """The version's scores, one row per evaluation and method (model, baseline), oldest first."""
    found = _read(catalog, "evaluations", (ds.field("model") == ref) & (ds.field("scope") == "mean"), EVALUATION,
                  group=name)
    rows = _rows(found.sort_by([("created_at", "ascending"), ("method", "descending")]))
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def training_data(catalog: Catalog, source: str | None, task: str | None = None,
                  recipe_hash: str | None = None, examples: int = EXAMPLES) -> dict | None:
    """What `source` (pairs:NAME or images:NAME) holds: counts, recipes and their hashes, a few examples with
    their drawn parameters and original images (checked against the images table), and the data sets."""
    if not source:
        return None
    if source.startswith(IMPORTED):  # trained elsewhere: the file it came from is all pixelmill knows
        return {"source": source, "table": "import", "name": source[len(IMPORTED):], "found": True} | NOTHING
    default = MODEL_TASKS[task].data if task in MODEL_TASKS else None
    try:
        ref = parse_data_ref(source, default=default)
    except PixelmillError:
        return {"source": source, "table": None, "name": source, "found": False} | NOTHING
    described = {"source": str(ref), "table": ref.table, "name": ref.name}
    if ref.name not in catalog.groups(ref.table):
        return described | {"found": False} | NOTHING
    if ref.table == "pairs":
        return described | {"found": True} | _pairs_set(catalog, ref.name, recipe_hash, examples)
    return described | {"found": True} | _image_set(catalog, ref.name, examples)


# what a set that is gone holds: the same keys as one that is there
NOTHING = {"count": 0, "ok": 0, "splits": {}, "recipes": [], "recipe_hashes": [], "recipe_hash_matches": None,
           "examples": [], "datasets": []}


def _counts(data: pa.Table, column: str) -> dict[str, int]:
    counted = pc.value_counts(data[column]).to_pylist()
    return dict(sorted((str(c["values"]), c["counts"]) for c in counted))


def _pairs_set(catalog: Catalog, name: str, recipe_hash: str | None, examples: int) -> dict:
    summary = catalog.read("pairs", name, columns=["pair_id", "split", "recipe", "recipe_hash", "dataset", "status"])
    hashes = sorted(h for h in pc.unique(summary["recipe_hash"]).to_pylist() if h)
    ok = summary.filter(pc.equal(summary["status"], "ok"))
    # examples from the training split when there is one: those are what the model learned from
    train = ok.filter(pc.equal(ok["split"], "train"))
    pool = train if train.num_rows else ok
    chosen = pool.sort_by("pair_id").slice(0, examples)["pair_id"].to_pylist()
    shown = [_with_params(r) for r in _rows(_read(catalog, "pairs", ds.field("pair_id").isin(chosen), PAIR,
                                                  group=name).sort_by("pair_id"))] if chosen else []
    datasets = sorted(d for d in pc.unique(summary["dataset"]).to_pylist() if d)
    return {"count": summary.num_rows, "ok": ok.num_rows, "splits": _counts(summary, "split"),
            "recipes": sorted(r for r in pc.unique(summary["recipe"]).to_pylist() if r), "recipe_hashes": hashes,
            "recipe_hash_matches": None if recipe_hash is None else recipe_hash in hashes,
            "examples": [_checked_against_images(catalog, p) for p in shown],
            "datasets": [_dataset(catalog, d) for d in datasets]}


def _checked_against_images(catalog: Catalog, pair: dict) -> dict:
    """A pair plus the images row of its original: the chain holds when that row's sha256 is the pair's."""
    found = _read(catalog, "images", ds.field("uri") == pair["image_uri"], ("uri", "sha256", "status"),
                  group=pair["dataset"]) if pair.get("image_uri") and pair.get("dataset") else None
    sha = found["sha256"][0].as_py() if found is not None and found.num_rows else None
    return pair | {"image_in_catalog": sha is not None, "image_sha256_matches": sha is not None
                   and sha == pair["image_sha256"]}


def _image_set(catalog: Catalog, name: str, examples: int) -> dict:
    summary = catalog.read("images", name, columns=["uri", "split", "status"])
    ok = summary.filter(pc.equal(summary["status"], "ok"))
    chosen = ok.sort_by("uri").slice(0, examples)["uri"].to_pylist()
    shown = _rows(_read(catalog, "images", ds.field("uri").isin(chosen), ("uri", "sha256", "split", "mask_uri"),
                        group=name).sort_by("uri")) if chosen else []
    return {"count": summary.num_rows, "ok": ok.num_rows, "splits": _counts(summary, "split"), "recipes": [],
            "recipe_hashes": [], "recipe_hash_matches": None, "examples": shown, "datasets": [_dataset(catalog, name)]}


def _dataset(catalog: Catalog, name: str) -> dict:
    if name not in catalog.groups("images"):
        return {"name": name, "found": False, "images": 0, "ok": 0}
    status = catalog.read("images", name, columns=["status"])["status"]
    return {"name": name, "found": True, "images": len(status), "ok": pc.sum(pc.equal(status, "ok")).as_py() or 0}


def _used_by(catalog: Catalog, image: dict) -> dict:
    """What was made from an ingested image: pairs (by set), models trained on those sets or on its data set
    (segmentation), and the outputs made from it."""
    uri, sha = image["uri"], image["sha256"]
    made = _any(_equals("image_uri", uri), _equals("image_sha256", sha))
    pairs = _read(catalog, "pairs", made, ("set_name", "pair_id", "recipe", "split")) if made is not None else None
    sets = []
    if pairs is not None and pairs.num_rows:
        for name, n in _counts(pairs, "set_name").items():
            one = pairs.filter(pc.equal(pairs["set_name"], name))
            sets.append({"set_name": name, "pairs": n, "recipe": one["recipe"][0].as_py(),
                         "splits": sorted(set(one["split"].to_pylist()))})
    applied = _any(_equals("input_uri", uri), _equals("input_sha256", sha))
    outputs = _read(catalog, "predictions", applied, ("model", "model_version", "output_uri", "status", "flag",
                                                      "run_id", "created_at")) if applied is not None else None
    sources = [f"pairs:{s['set_name']}" for s in sets] + [f"images:{image['dataset']}"]
    return {"pair_sets": sets, "models": _models_trained_on(catalog, sources), "outputs": _outputs_brief(outputs)}


def _models_trained_on(catalog: Catalog, sources: list[str]) -> list[str]:
    if not sources:
        return []
    found = catalog.read("models", columns=["name", "version", "source"], filter=ds.field("source").isin(sources))
    return sorted(f"{n}:{v}" for n, v in zip(found["name"].to_pylist(), found["version"].to_pylist(), strict=True))


def _outputs_brief(outputs: pa.Table | None) -> dict:
    if outputs is None or outputs.num_rows == 0:
        return {"count": 0, "examples": []}
    newest = _rows(outputs.sort_by([("created_at", "descending")]).slice(0, EXAMPLES))
    for r in newest:
        r["model"] = f"{r['model']}:{r.pop('model_version')}"
    return {"count": outputs.num_rows, "examples": newest}


# ---------------------------------------------------------------- walking back from a file


def lineage_of_file(workspace: str, target: str) -> dict:
    """Where `target` (a local path, relative to the current directory, or a URL) came from.

    Found, in this order, as: an output or overlay of a predictions row (by URI), an ingested image (images row
    by URI), a file of a paired set (pairs row by hr/lr/mask URI); then by the sha256 of its bytes as an output
    copied elsewhere (output_sha256) or an image (images sha256); then by the provenance pixelmill wrote into
    the file (model, model_version, input_uri, run_id).

    Returns a JSON-able dict; every key is always there, None where it does not apply:
        workspace     the canonical workspace URL
        kind          "file"
        target        given, uri, sha256 (None: no file there), role (output | overlay | image | pair_hr |
                      pair_lr | pair_mask | provenance_only), matched_by (output_uri | overlay_uri |
                      output_sha256 | provenance | uri | sha256 | hr/lr/mask uri as pairs_uri)
        provenance    the file's own metadata (model, model_version, weights_sha256, input_uri, input_sha256,
                      run_id, pixelmill_version) when it carries one
        prediction    the predictions row (the PREDICTION columns; times as ISO strings)
        model         the version: ref, name, version, missing, uri, task, arch, arch_kwargs, scale, source,
                      recipe_hash, weights_sha256, metrics, steps, code_version, created_at, train_config,
                      aliases (pointing at it now), promotions (registry.promotions entries that moved to or
                      from it), evaluations (scope mean rows: evaluation_id, source, split, method, scores...)
        training      what the model trained on: source, table (pairs | images), name, found, count, ok,
                      splits, recipes, recipe_hashes, recipe_hash_matches (the model's hash is among the set's),
                      examples (pairs rows with params parsed, image_in_catalog, image_sha256_matches; for
                      images: uri, sha256, split, mask_uri), datasets ([{name, found, images, ok}])
        input_image   the images row the file derives from (the applied input, a pair's original) + matched_by
        image         the images row when the target is an ingested image, with `same_content` (other rows)
        pair          the pairs row when the target is a pair file (params parsed), with `set` (as training)
        used_by       for an image: pair_sets [{set_name, pairs, recipe, splits}], models (refs trained on
                      those sets), outputs {count, examples}
        warnings      sentences about links that do not hold (a changed file, a missing model, another recipe)
    """
    ws = Layout.of(workspace).root
    catalog = Catalog(ws)
    candidates = _candidates(target)
    data = _file_bytes(candidates[0])
    sha = hashlib.sha256(data).hexdigest() if data is not None else None
    out: dict[str, Any] = {"workspace": ws, "kind": "file", "target": {"given": target, "uri": candidates[0],
                           "sha256": sha, "role": None, "matched_by": None}, "provenance": None,
                           "prediction": None, "model": None, "training": None, "input_image": None, "image": None,
                           "pair": None, "used_by": None, "warnings": []}

    # a name first (where the file is says more than what it holds: two copies of one image are two rows)
    named = ds.field("output_uri").isin(candidates) | ds.field("overlay_uri").isin(candidates)
    if row := _find_prediction(catalog, named, sha):
        how = "output_uri" if row["output_uri"] in candidates else "overlay_uri"
        out["target"] |= {"role": "output" if how == "output_uri" else "overlay", "matched_by": how}
        return _from_prediction(ws, catalog, out, row, data)
    if found := _find_image(catalog, ds.field("uri").isin(candidates)):
        return _from_image(catalog, out, *found, how="uri")
    if found := _find_pair(catalog, candidates):
        return _from_pair(catalog, out, *found)
    # then the content: a copy made elsewhere
    if sha and (row := _find_prediction(catalog, ds.field("output_sha256") == sha, sha)):
        out["target"] |= {"role": "output", "matched_by": "output_sha256"}
        return _from_prediction(ws, catalog, out, row, data)
    if sha and (found := _find_image(catalog, ds.field("sha256") == sha)):
        return _from_image(catalog, out, *found, how="sha256")
    # last, what the file says of itself: an output edited or re-encoded since
    if prov := _provenance(data):
        out["provenance"] = prov
        row = _prediction_by_provenance(catalog, prov)
        out["target"] |= {"role": "output" if row else "provenance_only", "matched_by": "provenance"}
        if row:
            return _from_prediction(ws, catalog, out, row, data)
        return _from_provenance(ws, catalog, out, prov)
    there = "the file exists but" if sha else "there is no file there and"
    raise PixelmillError(
        f"{target} is not an output or cataloged file of workspace {ws}: {there} no predictions, images or pairs "
        f"row names it" + (" or holds its sha256" if sha else ""),
        "give an output written by `pixelmill apply`, an ingested image or a paired set's file (or a copy of one), "
        "or a model reference (NAME, NAME:vN, NAME@ALIAS); check --workspace")


def _from_prediction(ws: str, catalog: Catalog, out: dict, row: dict, data: bytes | None) -> dict:
    out["prediction"] = row
    out["provenance"] = out["provenance"] or _provenance(data)
    sha, how = out["target"]["sha256"], out["target"]["matched_by"]
    if how == "output_uri" and sha is None:
        out["warnings"].append(f"no file at {out['target']['uri']} any more: shown is what the catalog recorded")
    elif how == "output_uri" and row["output_sha256"] and sha != row["output_sha256"]:
        out["warnings"].append(f"the file is not what run {row['run_id']} wrote (its sha256 differs from the "
                               f"recorded {row['output_sha256'][:16]}): it was changed or replaced since")
    elif how == "provenance" and row["output_sha256"] and sha != row["output_sha256"]:
        out["warnings"].append(f"the file is an edited or re-encoded copy of {row['output_uri']} (found by the "
                               "provenance in its metadata; its bytes differ)")
    out["input_image"] = _input_image(catalog, row["input_uri"], row["input_sha256"])
    return _with_model(ws, catalog, out, row["model"], row["model_version"])


def _from_provenance(ws: str, catalog: Catalog, out: dict, prov: dict) -> dict:
    out["warnings"].append("no predictions row records this file: the chain below is what its own metadata says")
    out["input_image"] = _input_image(catalog, prov.get("input_uri"), prov.get("input_sha256"))
    if not (prov.get("model") and prov.get("model_version")):
        return out
    return _with_model(ws, catalog, out, prov["model"], prov["model_version"])


def _with_model(ws: str, catalog: Catalog, out: dict, name: str, version: str) -> dict:
    model = model_version(ws, catalog, name, version)
    out["model"] = model
    if model["missing"]:
        out["warnings"].append(f"model {model['ref']} is no longer in the registry (its folder is gone)")
    seen = (out["provenance"] or {}).get("weights_sha256")
    if seen and model["weights_sha256"] and seen != model["weights_sha256"]:
        out["warnings"].append(f"the file says weights {seen[:16]}, the registry's {model['ref']} has "
                               f"{model['weights_sha256'][:16]}: the version was replaced since")
    out["training"] = training_data(catalog, model["source"], model["task"], model["recipe_hash"])
    out["warnings"] += _training_warnings(out["training"])
    return out


def _training_warnings(training: dict | None) -> list[str]:
    if training is None:
        return []
    if not training["found"]:
        return [f"{training['source']} is no longer in the catalog"]
    said = []
    if training["recipe_hash_matches"] is False:
        said.append(f"{training['source']} now holds recipe hash(es) {', '.join(training['recipe_hashes'])}, not "
                    "the one the model was trained on: the set was made again with another recipe")
    said += [f"pair {p['pair_id']}'s original {p['image_uri']} is not in the images table with sha256 "
             f"{(p['image_sha256'] or '')[:16]}" for p in training["examples"]
             if "image_sha256_matches" in p and not p["image_sha256_matches"]]
    return said


def _from_image(catalog: Catalog, out: dict, row: dict, others: list[dict], how: str) -> dict:
    out["target"] |= {"role": "image", "matched_by": how}
    out["image"] = row | {"same_content": others}
    out["used_by"] = _used_by(catalog, row)
    if how == "uri" and out["target"]["sha256"] and row["sha256"] and out["target"]["sha256"] != row["sha256"]:
        out["warnings"].append("the file changed since it was ingested (its sha256 differs): ingest it again")
    return out


def _from_pair(catalog: Catalog, out: dict, row: dict, role: str) -> dict:
    out["target"] |= {"role": role, "matched_by": "pairs_uri"}
    out["pair"] = row | {"set": training_data(catalog, f"pairs:{row['set_name']}", examples=0)}
    out["input_image"] = _input_image(catalog, row["image_uri"], row["image_sha256"])
    out["used_by"] = {"pair_sets": [], "models": _models_trained_on(catalog, [f"pairs:{row['set_name']}"]),
                      "outputs": {"count": 0, "examples": []}}
    if out["input_image"] and out["input_image"]["sha256"] != row["image_sha256"]:
        out["warnings"].append(f"the original {row['image_uri']} changed since the pair was made")
    return out


# ---------------------------------------------------------------- walking forward from a model


def lineage_of_model(workspace: str, ref: str) -> dict:
    """What a model version (NAME, NAME:vN, NAME@ALIAS) is and what it made.

    Returns a JSON-able dict with stable keys:
        workspace, kind ("model"), model (as in lineage_of_file), training (as in lineage_of_file),
        outputs       total, ok, error, flagged, runs: [{output_root, run_id, rows, ok, error, flagged,
                      first, last}] (first/last: created_at as ISO strings, oldest run first), examples: the
                      newest few ok outputs [{input_uri, output_uri, run_id, flag, created_at}]
        warnings      as in lineage_of_file
    Unknown names, versions and aliases raise the registry's PixelmillError (it lists what exists).
    """
    ws = Layout.of(workspace).root
    catalog = Catalog(ws)
    card = registry.resolve(ws, ref)
    model = model_version(ws, catalog, card.name, card.version)
    training = training_data(catalog, model["source"], model["task"], model["recipe_hash"])
    return {"workspace": ws, "kind": "model", "model": model, "training": training,
            "outputs": outputs_of(catalog, card.name, card.version), "warnings": _training_warnings(training)}


def outputs_of(catalog: Catalog, name: str, version: str) -> dict:
    """A version's predictions rows counted by output folder and run."""
    rows = _read(catalog, "predictions", ds.field("model_version") == version, ("output_root", "run_id", "status",
                 "flag", "input_uri", "output_uri", "created_at"), group=name)
    ok = pc.fill_null(pc.equal(rows["status"], "ok"), False)
    flagged = pc.fill_null(rows["flag"], False)
    counted = rows.select(["output_root", "run_id", "created_at"]).append_column(
        "ok", ok.cast(pa.int64())).append_column("error", pc.invert(ok).cast(pa.int64())).append_column(
        "flagged", flagged.cast(pa.int64()))
    grouped = counted.group_by(["output_root", "run_id"], use_threads=False).aggregate([
        ("ok", "count"), ("ok", "sum"), ("error", "sum"), ("flagged", "sum"), ("created_at", "min"),
        ("created_at", "max")]).sort_by([("created_at_min", "ascending")])
    runs = [{"output_root": g["output_root"], "run_id": g["run_id"], "rows": g["ok_count"], "ok": g["ok_sum"],
             "error": g["error_sum"], "flagged": g["flagged_sum"], "first": g["created_at_min"],
             "last": g["created_at_max"]} for g in _rows(grouped)]
    newest = rows.filter(ok).sort_by([("created_at", "descending")]).slice(0, EXAMPLES)
    examples = _rows(newest.select(["input_uri", "output_uri", "run_id", "flag", "created_at"]))
    return {"total": rows.num_rows, "ok": pc.sum(ok).as_py() or 0, "error": rows.num_rows - (pc.sum(ok).as_py() or 0),
            "flagged": pc.sum(flagged).as_py() or 0, "runs": runs, "examples": examples}


# ---------------------------------------------------------------- a run's flagged outputs


REVIEW = ("model", "model_version", "input_uri", "output_uri", "status", "flag", "flag_reason", *CHECKS, "notes",
          "created_at")


def review_run(workspace: str, run_id: str) -> dict:
    """The outputs of a flow run that a check flagged for a person to look at.

    Returns {workspace, run_id, outputs (rows of the run), errors, flagged, rows: [{model (NAME:vN), input_uri,
    output_uri, flag_reason, drift_mean, drift_p95, niqe_input, niqe_output, clipped, notes, created_at}]},
    rows sorted by input. An id that no predictions row carries is a PixelmillError naming the newest runs."""
    ws = Layout.of(workspace).root
    catalog = Catalog(ws)
    rows = _read(catalog, "predictions", ds.field("run_id") == run_id, REVIEW)
    if rows.num_rows == 0:
        raise PixelmillError(f"no outputs of run {run_id!r} in workspace {ws}",
                             f"{_recent_runs(catalog)}; a run id is the Prefect flow run's id (apply prints it)")
    flagged = rows.filter(pc.fill_null(rows["flag"], False)).sort_by("input_uri")
    shown = [{"model": f"{r['model']}:{r['model_version']}"}
             | {k: v for k, v in r.items() if k not in ("model", "model_version", "flag", "status")}
             for r in _rows(flagged)]
    errors = pc.sum(pc.fill_null(pc.not_equal(rows["status"], "ok"), False)).as_py() or 0
    return {"workspace": ws, "run_id": run_id, "outputs": rows.num_rows, "errors": errors,
            "flagged": flagged.num_rows, "rows": shown}


def _recent_runs(catalog: Catalog, n: int = 5) -> str:
    runs = catalog.read("predictions", columns=["run_id", "created_at"])
    runs = runs.filter(pc.is_valid(runs["run_id"]))
    if runs.num_rows == 0:
        return "no predictions there carry a run id"
    newest = runs.group_by("run_id", use_threads=False).aggregate([("created_at", "max")]).sort_by(
        [("created_at_max", "descending")]).slice(0, n)
    return "newest runs there: " + ", ".join(newest["run_id"].to_pylist())


# ---------------------------------------------------------------- text


def _short(sha: str | None) -> str:
    return sha[:16] if sha else "?"


def _number(value: Any, fmt: str = ".3g") -> str:
    return "?" if value is None else format(value, fmt)


def _checks(row: dict) -> str:
    if all(row.get(c) is None for c in CHECKS):
        return "not checked"
    return (f"drift {_number(row.get('drift_mean'))} mean / {_number(row.get('drift_p95'))} p95, NIQE "
            f"{_number(row.get('niqe_input'))} -> {_number(row.get('niqe_output'))}, clipped "
            f"{_number((row.get('clipped') or 0) * 100, '.2g')}%")


def _time(value: str | None) -> str:
    return value[:19].replace("T", " ") + " UTC" if value else "?"


def _model_lines(model: dict) -> list[str]:
    tags = " ".join(f"@{a}" for a in model["aliases"])
    if model["missing"]:
        lines = [f"model {model['ref']}  (missing from the registry)"]
    else:
        lines = [f"model {model['ref']}  {model['task']} {model['arch']} x{model['scale']}" + (f"  {tags}" if tags
                                                                                                 else "")]
    made = (f"imported from {model['source'].removeprefix(IMPORTED)}" if (model["source"] or "").startswith(IMPORTED)
            else f"trained {model['steps'] if model['steps'] is not None else '?'} steps on {model['source'] or '?'}")
    lines += [f"  weights sha256 {_short(model['weights_sha256'])}",
              f"  {made} at {_time(model['created_at'])}, code {model['code_version'] or '?'}"]
    if model.get("source_sha256"):
        lines.append(f"  imported file sha256 {_short(model['source_sha256'])}, licence {model.get('licence') or '?'}")
    numbers = {k: v for k, v in (model["metrics"] or {}).items() if isinstance(v, int | float)}
    shown = {k: v for k, v in numbers.items() if k.startswith("val_")} or numbers
    if shown:
        lines.append("  last validation: " + "  ".join(f"{k} {v:.4g}" for k, v in list(shown.items())[:6]))
    if model["evaluations"]:
        lines.append("  evaluations:")
        for e in model["evaluations"]:
            scores = "  ".join(f"{k} {e[k]:.4g}" for k in ("psnr_y", "ssim_y", "miou", "global_acc") if k in e)
            lines.append(f"    {e.get('source', '?')}/{e.get('split', '?')} {e.get('method', '?'):8s} {scores}  "
                         f"({e.get('images', '?')} images, {_time(e.get('created_at'))})")
    if model["promotions"]:
        lines.append("  promotions:")
        for p in model["promotions"]:
            moved = (f"@{p['alias']} -> {p['version']} (was {p['previous'] or 'unset'})")
            why = f": {p['reason']}" if p.get("reason") else ""
            lines.append(f"    {_time(p['at'])}  {moved}{why}")
    return lines


def _training_lines(training: dict | None, label: str = "trained on") -> list[str]:
    if training is None:
        return [f"{label}: unknown (the model does not say)"]
    if not training["found"]:
        return [f"{label} {training['source']}: no longer in the catalog"]
    if training["table"] == "import":
        return [f"imported from {training['name']}: trained elsewhere, not by pixelmill"]
    splits = ", ".join(f"{n} {s}" for s, n in training["splits"].items())
    what = "pairs" if training["table"] == "pairs" else "images"
    lines = [f"{label} {training['source']}: {training['count']} {what} ({splits})"]
    if training["recipes"]:
        matches = {True: ", the model's", False: ", NOT the model's", None: ""}[training["recipe_hash_matches"]]
        lines.append(f"  recipe {', '.join(training['recipes'])}  hash {', '.join(training['recipe_hashes'])}"
                     f"{matches}")
    for p in training["examples"]:
        if training["table"] == "pairs":
            lines += [f"  pair {p['pair_id']} ({p['split']}, seed {p['seed']})",
                      f"    params {json.dumps(p['params'], separators=(',', ':'))}",
                      f"    hr {p['hr_uri']}{_hr_note(p)}", f"    lr {p['lr_uri']}",
                      f"    from {p['image_uri']}  sha256 {_short(p['image_sha256'])}  "
                      + (f"(images:{p['dataset']}, sha256 matches)" if p["image_sha256_matches"]
                         else "(NOT in the images table with this sha256)")]
        else:
            lines.append(f"  image {p['uri']} ({p['split']})  sha256 {_short(p['sha256'])}")
    for d in training["datasets"]:
        lines.append(f"  data set images:{d['name']}: " + (f"{d['images']} images ({d['ok']} ok)" if d["found"]
                                                           else "no longer in the catalog"))
    return lines


def _hr_note(pair: dict) -> str:
    """How the pair stores its HR target, when it refers to the source instead of a written copy."""
    if pair.get("hr_kind") != "source":
        return ""
    crop = pair.get("hr_crop")
    return " (the source itself" + (f", cropped to {crop}" if crop else "") + ")"


def _ingested_as(image: dict) -> str:
    return (f"    ingested as images:{image['dataset']} {image['uri']} ({image['split']}, sha256 "
            f"{_short(image['sha256'])}, found by {image['matched_by']})")


def _indent(lines: list[str], by: int) -> list[str]:
    return [" " * by + line for line in lines]


def render(lineage: dict) -> str:
    """The lineage as an indented tree: the file (or model) first, then each link back to the source images."""
    if lineage["kind"] == "model":
        return _render_model(lineage)
    target, lines = lineage["target"], []
    lines.append(f"{target['uri']}  ({target['role']}, found by {target['matched_by']})")
    lines.append(f"  sha256 {_short(target['sha256']) if target['sha256'] else '(no file there)'}")
    if p := lineage["prediction"]:
        flag = f"FLAGGED: {p['flag_reason']}" if p["flag"] else "not flagged"
        lines += [f"  written by run {p['run_id'] or '?'} at {_time(p['created_at'])}  status {p['status']}"
                  + (f" ({p['error']})" if p["error"] else ""),
                  f"    output {p['output_uri']}  sha256 {_short(p['output_sha256'])}",
                  f"    input  {p['input_uri']}  sha256 {_short(p['input_sha256'])}",
                  f"    checks {_checks(p)}; {flag}"]
        lines += [f"    notes {p['notes']}"] if p.get("notes") else []
    elif prov := lineage["provenance"]:
        lines += [f"  its metadata says: {prov.get('model')}:{prov.get('model_version')} on {prov.get('input_uri')}"
                  f", run {prov.get('run_id')}"]
    if (img := lineage["input_image"]) and not lineage["pair"]:
        lines.append(_ingested_as(img))
    if img := lineage["image"]:
        lines += [f"  ingested in images:{img['dataset']} ({img['split']}, {img['status']}) at "
                  f"{_time(img['ingested_at'])}", f"    {img['width']}x{img['height']} {img['format']} {img['mode']}"]
        lines += [f"    same content: images:{o['dataset']} {o['uri']}" for o in img["same_content"]]
    if pair := lineage["pair"]:
        lines += [f"  pair {pair['pair_id']} of pairs:{pair['set_name']} ({pair['split']}, recipe {pair['recipe']} "
                  f"hash {pair['recipe_hash']}, seed {pair['seed']})",
                  f"    params {json.dumps(pair['params'], separators=(',', ':'))}",
                  f"    from {pair['image_uri']}  sha256 {_short(pair['image_sha256'])}"]
        lines += [f"    hr target: {pair['hr_uri']}{_hr_note(pair)}"] if pair.get("hr_kind") == "source" else []
        lines += [_ingested_as(img)] if (img := lineage["input_image"]) else []
        lines += _indent(_training_lines(pair["set"], "in"), 2)
    if used := lineage["used_by"]:
        lines += [f"  made into pairs:{s['set_name']} ({s['pairs']} pair(s), recipe {s['recipe']})"
                  for s in used["pair_sets"]]
        lines += [f"  trained {', '.join(used['models'])}"] if used["models"] else []
        if used["outputs"]["count"]:
            lines.append(f"  applied {used['outputs']['count']} time(s), newest: "
                         f"{used['outputs']['examples'][0]['output_uri']}")
    if lineage["model"]:
        lines += _indent(_model_lines(lineage["model"]), 2)
        lines += _indent(_training_lines(lineage["training"]), 4)
    lines += [f"warning: {w}" for w in lineage["warnings"]]
    return "\n".join(lines)


def _render_model(lineage: dict) -> str:
    lines = _model_lines(lineage["model"]) + _indent(_training_lines(lineage["training"]), 2)
    out = lineage["outputs"]
    lines.append(f"  outputs: {out['total']} ({out['ok']} ok, {out['error']} error, {out['flagged']} flagged)")
    if len(out["runs"]) > RUNS_SHOWN:
        lines.append(f"    ... {len(out['runs']) - RUNS_SHOWN} earlier runs (--json lists them)")
    for r in out["runs"][-RUNS_SHOWN:]:
        lines.append(f"    run {r['run_id'] or '?'} -> {r['output_root']}: {r['rows']} ({r['ok']} ok, {r['error']} "
                     f"error, {r['flagged']} flagged), {_time(r['first'])} .. {_time(r['last'])}")
    for e in out["examples"]:
        lines.append(f"    e.g. {e['input_uri']} -> {e['output_uri']}")
    lines += [f"warning: {w}" for w in lineage["warnings"]]
    return "\n".join(lines)


def render_review(review: dict) -> str:
    """A run's flagged outputs, one block each, after the count line."""
    lines = [f"run {review['run_id']}: {review['flagged']} of {review['outputs']} outputs flagged"
             + (f" ({review['errors']} failed)" if review["errors"] else "")]
    for r in review["rows"]:
        lines += [f"  {r['input_uri']}", f"    -> {r['output_uri']}  ({r['model']})",
                  f"    reason: {r['flag_reason'] or '?'}", f"    {_checks(r)}"]
    return "\n".join(lines)
