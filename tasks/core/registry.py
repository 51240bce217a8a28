"""The model registry on any storage: `{workspace}/models/{name}/{version}/` plus the `models` table.

A version folder holds `weights.safetensors` (no pickle), `config.json` (architecture and its arguments,
task, scale, input range) and `metadata.json` (what it was trained on, steps, metrics, the weights' sha256,
code version, time), written in that order: a folder without metadata.json is an unfinished save and is
ignored. `resolve` reads both into a `ModelCard` (tasks/core/cards.py); `load_weights` takes a card.

References: `name` (latest version), `name:v3`, `name@production` (an alias, set by promotion), or the
URL of a version folder.

Safe with many writers at once (two trainings of one name, two promotions of one alias), on one machine or many:
- `save` takes its version by creating `vN/.claim` exclusively (storage.create_exclusive: a hard link locally,
  a PUT with `If-None-Match: *` on S3); a lost claim means another save has vN, and it tries vN+1.
- `set_alias` moves an alias by compare-and-swap of aliases.json (storage.update_bytes: an flock locally,
  `If-Match` its ETag on S3); with `expected=` the move is refused (`AliasMoved`) when the alias no longer
  points where the caller saw it, so `evaluate --promote` never overwrites a promotion that raced it.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import socket
import subprocess
import uuid
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.cards import ModelCard
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.core.layout import Layout
from pixelmill.tasks.core.names import check_name

_VERSION = re.compile(r"^v(\d+)$")
_REF = re.compile(r"^([^:@/]+)(?:@([^:@]+)|:([^:@]+))?$")
CLAIM = ".claim"  # in every version folder: who took that version number (hidden: listings skip it)
ANY = object()  # set_alias(expected=ANY): move the alias whatever it points at now


class AliasMoved(PixelmillError):
    """A compare-and-swap move of an alias refused: it no longer points at the version the caller saw."""


def _writer() -> str:
    """Who writes: user@host (pid), for claims and the promotion history."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = str(os.getuid()) if hasattr(os, "getuid") else "?"
    return f"{user}@{socket.gethostname()} (pid {os.getpid()})"


def code_version() -> str:
    """The git commit when run from a checkout, else the installed package version."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return importlib_metadata.version("pixelmill")


def names(workspace: str) -> list[str]:
    return storage.list_folders(Layout.of(workspace).models)


def _version_folders(root: str) -> list[str]:
    """Every `vN` folder of a model, complete, in progress or abandoned, oldest first."""
    return sorted((v for v in storage.list_folders(root) if _VERSION.match(v)), key=lambda v: int(v[1:]))


def versions(workspace: str, name: str) -> list[str]:
    """Complete versions of a model, oldest first."""
    root = Layout.of(workspace).model(name)
    return [v for v in _version_folders(root) if storage.exists(storage.join(root, v, "metadata.json"))]


def claim_version(workspace: str, name: str) -> str:
    """Take the next version number of model `name` for this caller alone: `vN/.claim` is created exclusively
    (storage.create_exclusive), and a claim lost to another writer tries vN+1. Starts after every folder that
    exists, finished or not, so an abandoned save's folder is never written into."""
    root = Layout.of(workspace).model(name)
    folders = _version_folders(root)
    number = int(folders[-1][1:]) + 1 if folders else 1
    claim = json.dumps({"token": uuid.uuid4().hex, "by": _writer(),  # the token makes this claim's bytes unique
                        "at": datetime.now(UTC).isoformat()}).encode()
    while not storage.create_exclusive(storage.join(root, f"v{number}", CLAIM), claim):
        number += 1
    return f"v{number}"


def aliases(workspace: str, name: str) -> dict[str, str]:
    uri = Layout.of(workspace).aliases(name)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else {}


def resolve(workspace: str, ref: str) -> ModelCard:
    """The card of the version a reference names; unknown names, versions and aliases say what exists."""
    if "://" in ref or ref.startswith(("/", ".")):
        uri = storage.normalize_url(ref)
        if not storage.exists(storage.join(uri, "config.json")):
            raise PixelmillError(f"no model at {ref}", "a model folder holds weights.safetensors and config.json")
        parent, version = uri.rsplit("/", 1)
        return read_card(uri, parent.rsplit("/", 1)[-1], version)  # metadata.json's name and version win
    match = _REF.match(ref)
    if not match:
        raise PixelmillError(f"cannot read model reference {ref!r}", "use NAME, NAME:VERSION, NAME@ALIAS or a URL")
    name, alias, version = match.groups()
    have = versions(workspace, name)
    if not have:
        known = ", ".join(names(workspace)) or "none yet"
        raise PixelmillError(f"unknown model {name!r} in {Layout.of(workspace).models}",
                             f"known models: {known}; train one with `pixelmill train restoration`")
    if alias:
        table = aliases(workspace, name)
        if alias not in table:
            raise PixelmillError(f"model {name!r} has no alias {alias!r}",
                                 f"aliases: {', '.join(f'{k}={v}' for k, v in table.items()) or 'none'}; "
                                 f"set one with `pixelmill models promote {name}:VERSION {alias}`")
        version = table[alias]
    version = version or have[-1]
    if version not in have:
        raise PixelmillError(f"model {name!r} has no version {version!r}", f"versions: {', '.join(have)}")
    return read_card(Layout.of(workspace).model_version(name, version), name, version)


def read_json(card: ModelCard, file: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(card.uri, file)))


def read_card(uri: str, name: str, version: str) -> ModelCard:
    config = json.loads(storage.read_bytes(storage.join(uri, "config.json")))
    meta_uri = storage.join(uri, "metadata.json")
    metadata = json.loads(storage.read_bytes(meta_uri)) if storage.exists(meta_uri) else {}
    return ModelCard.from_files(uri, config, metadata, name, version)


def load_weights(card: ModelCard):
    """The model in eval mode on the CPU; damaged weights, weights that do not match the card's digest or its
    architecture are a clear error."""
    from pixelmill.models.checkpoint import load_model_from_bytes  # torch: only where weights are read

    hint = ("the files are damaged or from an incompatible version: retrain or pick another version "
            "(`pixelmill models list`)")
    data = storage.read_bytes(storage.join(card.uri, "weights.safetensors"))
    if card.weights_sha256 and hashlib.sha256(data).hexdigest() != card.weights_sha256:
        raise PixelmillError(f"model {card.ref} at {card.uri} cannot be loaded: its weights do not match the "
                             f"sha256 in metadata.json", hint)
    try:
        return load_model_from_bytes(data, card.factory_config()).eval()
    except Exception as exc:  # safetensors, torch and the factory each raise their own types for bad files
        raise PixelmillError(f"model {card.ref} at {card.uri} cannot be loaded: {exc}", hint) from None


def save(workspace: str, name: str, model, config: dict, metadata: dict) -> ModelCard:
    """Write a new version (weights, config, then metadata) and its row in the `models` table.

    config: the objective's `registry_config()` (task, scale, channels, class map...); metadata: what it was
    trained on, steps, metrics, and anything else worth keeping in metadata.json. Both go through the card, so
    what is written is what `resolve` reads back."""
    from pixelmill.models.checkpoint import save_model_bytes

    check_name(name, "model name")
    weights, model_config = save_model_bytes(model)
    version = claim_version(workspace, name)  # after the slow part: an abandoned claim costs a number, no more
    uri = Layout.of(workspace).model_version(name, version)
    now = datetime.now(UTC)
    card = ModelCard.from_files(uri, {**config, "model": model_config}, {
        **metadata, "name": name, "version": version, "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "code_version": code_version(), "created_at": now.isoformat()})
    storage.write_bytes(storage.join(uri, "weights.safetensors"), weights)
    storage.write_bytes(storage.join(uri, "config.json"), json.dumps(card.config_json(), indent=1).encode())
    storage.write_bytes(storage.join(uri, "metadata.json"),
                        json.dumps(metadata | card.metadata_json(), indent=1).encode())
    Catalog(workspace).write_part("models", name, version, [{
        "name": name, "version": version, "uri": uri, "arch": card.arch, "task": card.task, "scale": card.scale,
        "source": card.source, "recipe_hash": card.recipe_hash, "steps": card.steps,
        "metrics": json.dumps(card.metrics), "code_version": card.code_version, "created_at": now}])
    return card


def set_alias(workspace: str, card: ModelCard, alias: str, reason: str | None = None, expected=ANY,
              by: str | None = None) -> str | None:
    """Point `alias` at the card's version; returns the version it pointed at before (None: it was new).

    The move is a compare-and-swap of aliases.json (storage.update_bytes), so concurrent moves of other aliases
    are never lost. With `expected` (the version the caller saw, None for "no such alias") the move is refused
    with AliasMoved when the alias points elsewhere now; the default ANY moves it whatever it points at.
    aliases.json holds only the present; a change is also kept as one file under the model's promotions/
    folder (never rewritten), so `pixelmill lineage` can say when a version got or lost an alias, why when the
    caller says (`reason`), and who (`by`, default user@host and pid)."""
    check_name(alias, "alias")
    uri = Layout.of(workspace).aliases(card.name)
    seen: dict[str, str | None] = {}

    def move(raw: bytes | None) -> bytes | None:
        table = json.loads(raw) if raw else {}
        seen["previous"] = previous = table.get(alias)
        if expected is not ANY and previous != expected:
            raise AliasMoved(f"{card.name}@{alias} points at {previous or 'nothing'} now, not "
                             f"{expected or 'nothing'} as when it was read"
                             f"{_last_move(workspace, card.name, alias, previous)}",
                             "read the alias again and decide again (`pixelmill models list`)")
        return None if previous == card.version else json.dumps(table | {alias: card.version}).encode()

    storage.update_bytes(uri, move)
    previous = seen["previous"]
    if previous == card.version:
        return previous  # not a change: the history stays a list of moves
    at = datetime.now(UTC)
    record = {"model": card.name, "alias": alias, "version": card.version, "previous": previous,
              "at": at.isoformat(), "reason": reason, "by": by or _writer()}
    # the time first (sortable, to the microsecond), then what moved: two changes never share a name
    file = f"{at.strftime('%Y%m%dT%H%M%S%fZ')}-{alias}-{card.version}.json"
    storage.write_bytes(storage.join(Layout.of(workspace).promotions(card.name), file),
                        json.dumps(record, indent=1).encode())
    return previous


def _last_move(workspace: str, name: str, alias: str, version: str | None) -> str:
    """`; moved there by ... at ... (reason)` from the promotion history, or "" when it holds no such move yet
    (the winner writes its record just after the alias)."""
    moves = [p for p in promotions(workspace, name) if p["alias"] == alias and p["version"] == version]
    if not moves:
        return ""
    last = moves[-1]
    why = f": {last['reason']}" if last.get("reason") else ""
    return f"; moved there by {last.get('by') or 'an unknown writer'} at {last['at']}{why}"


def promotions(workspace: str, name: str) -> list[dict]:
    """Every alias change of model `name`, oldest first: model, alias, version, previous (None: the alias was
    new), at (ISO 8601, UTC) and reason (None unless the caller gave one). Empty for models promoted before the
    history was kept."""
    folder = Layout.of(workspace).promotions(name)
    records = [json.loads(storage.read_bytes(storage.join(folder, file)))
               for file in storage.list_names(folder, ".json")]
    return sorted(records, key=lambda r: datetime.fromisoformat(r["at"]))


def decide_promotion(ref: str, alias_ref: str, key: str, model: dict, baseline: dict, current: dict | None,
                     current_version: str | None) -> tuple[bool, str]:
    """Promote only if the model beats the baseline and the alias's current model, on the same data."""
    if model[key] <= baseline[key]:
        return False, f"not promoted: {key} {model[key]:.4g} does not beat the baseline's {baseline[key]:.4g}"
    if current is not None and model[key] <= current[key]:
        return False, (f"not promoted: {alias_ref} ({current_version}) scores {key} {current[key]:.4g}, "
                       f"this one {model[key]:.4g}")
    return True, (f"promoted: {ref} is now {alias_ref} ({key} {model[key]:.4g} vs baseline {baseline[key]:.4g}, "
                  f"previous {current_version or 'none'}"
                  + (f" at {current[key]:.4g})" if current is not None else ")"))
