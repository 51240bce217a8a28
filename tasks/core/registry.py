"""The model registry on any storage: `{workspace}/models/{name}/{version}/` plus the `models` table.

A version folder holds `weights.safetensors` (no pickle), `config.json` (architecture and its arguments,
task, scale, input range) and `metadata.json` (what it was trained on, steps, metrics, code version, time),
written in that order: a folder without metadata.json is an unfinished save and is ignored.

References: `name` (latest version), `name:v3`, `name@production` (an alias, set by promotion), or the
URL of a version folder.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import PixelmillError
from pixelmill.tasks.core.layout import Layout
from pixelmill.tasks.core.names import check_name

_VERSION = re.compile(r"^v(\d+)$")
_REF = re.compile(r"^([^:@/]+)(?:@([^:@]+)|:([^:@]+))?$")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    uri: str

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


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
    fs, path = storage.resolve(Layout.of(workspace).models)
    try:
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=True)
                      if e["type"] == "directory")
    except FileNotFoundError:
        return []


def versions(workspace: str, name: str) -> list[str]:
    """Complete versions of a model, oldest first."""
    root = Layout.of(workspace).model(name)
    fs, path = storage.resolve(root)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    found = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"]
    done = [v for v in found if _VERSION.match(v) and storage.exists(storage.join(root, v, "metadata.json"))]
    return sorted(done, key=lambda v: int(v[1:]))


def aliases(workspace: str, name: str) -> dict[str, str]:
    uri = Layout.of(workspace).aliases(name)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else {}


def resolve(workspace: str, ref: str) -> ModelVersion:
    """A reference to a concrete version; unknown names, versions and aliases say what exists."""
    if "://" in ref or ref.startswith(("/", ".")):
        uri = storage.normalize_url(ref)
        if not storage.exists(storage.join(uri, "config.json")):
            raise PixelmillError(f"no model at {ref}", "a model folder holds weights.safetensors and config.json")
        parent, version = uri.rsplit("/", 1)
        return ModelVersion(parent.rsplit("/", 1)[-1], version, uri)
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
    return ModelVersion(name, version, Layout.of(workspace).model_version(name, version))


def read_json(mv: ModelVersion, file: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(mv.uri, file)))


def load(mv: ModelVersion):
    """(model in eval mode, config, metadata); a corrupt or mismatched checkpoint is a clear error."""
    from pixelmill.models.checkpoint import load_model_from_bytes  # torch: only where weights are read

    config = read_json(mv, "config.json")
    try:
        model = load_model_from_bytes(storage.read_bytes(storage.join(mv.uri, "weights.safetensors")), config["model"])
    except Exception as exc:  # safetensors, torch and the factory each raise their own types for bad files
        raise PixelmillError(f"model {mv.ref} at {mv.uri} cannot be loaded: {exc}",
                             "the files are damaged or from an incompatible version: retrain or pick another "
                             "version (`pixelmill models list`)") from None
    meta = read_json(mv, "metadata.json") if storage.exists(storage.join(mv.uri, "metadata.json")) else {}
    return model.eval(), config, meta


def save(workspace: str, name: str, model, config: dict, metadata: dict) -> ModelVersion:
    """Write a new version (weights, config, then metadata) and its row in the `models` table."""
    from pixelmill.models.checkpoint import save_model_bytes

    check_name(name, "model name")
    have = versions(workspace, name)
    version = f"v{int(have[-1][1:]) + 1 if have else 1}"
    mv = ModelVersion(name, version, Layout.of(workspace).model_version(name, version))
    weights, model_config = save_model_bytes(model)
    config = {**config, "model": model_config}
    metadata = {**metadata, "name": name, "version": version, "code_version": code_version(),
                "created_at": datetime.now(UTC).isoformat()}
    storage.write_bytes(storage.join(mv.uri, "weights.safetensors"), weights)
    storage.write_bytes(storage.join(mv.uri, "config.json"), json.dumps(config, indent=1).encode())
    storage.write_bytes(storage.join(mv.uri, "metadata.json"), json.dumps(metadata, indent=1).encode())
    Catalog(workspace).write_part("models", name, version, [{
        "name": name, "version": version, "uri": mv.uri, "arch": model_config["arch"],
        "task": config.get("task"), "scale": config.get("scale"),
        "pairs_set": metadata.get("pairs_set") or metadata.get("dataset"),
        "recipe_hash": metadata.get("recipe_hash"), "steps": metadata.get("steps"),
        "metrics": json.dumps(metadata.get("metrics", {})), "code_version": metadata["code_version"],
        "created_at": datetime.now(UTC)}])
    return mv


def set_alias(workspace: str, mv: ModelVersion, alias: str) -> None:
    check_name(alias, "alias")
    table = aliases(workspace, mv.name) | {alias: mv.version}
    storage.write_bytes(Layout.of(workspace).aliases(mv.name), json.dumps(table).encode())


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
