"""The import contract: imports go one way, and the rooms of tasks/ never import each other.

    models  <-  tasks/core  <-  tasks/{prep, training, inference}  <-  tasks/steps  <-  flows

Every import counts, at the top of a module or inside a function (a lazy import is still a dependency).
Prefect is imported only by tasks/steps.py and flows/; models/ never imports Prefect or fsspec. Read from
the source with `ast`, so the check costs milliseconds and needs nothing installed; `make lint` runs it too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "tasks", "flows")
ROOMS = ("prep", "training", "inference")


def layer(module: str) -> str:
    """The contract's name for a pixelmill module: models, core, prep, training, inference, steps or flows."""
    parts = module.split(".")
    if parts[0] in ("models", "flows"):
        return parts[0]
    if len(parts) > 1 and parts[1] in ("core", "steps", *ROOMS):
        return parts[1]
    raise AssertionError(f"{module} is in no layer of the contract: place it in a room")


# what each layer may import from pixelmill (its own layer always)
ALLOWED = {
    "models": {"models"},
    "core": {"models", "core"},
    **{room: {"models", "core", room} for room in ROOMS},
    "steps": {"models", "core", *ROOMS, "steps"},
    "flows": {"models", "core", *ROOMS, "steps", "flows"},
}
PREFECT_LAYERS = {"steps", "flows"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if name not in PACKAGES and name != "tasks":  # the packages' own __init__ files import nothing
                found[name] = path
    return found


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pixelmill.tasks import steps` imports the module pixelmill.tasks.steps
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def violations() -> list[str]:
    found = []
    for name, path in modules().items():
        mine = layer(name)
        for line, imported in imports_of(path):
            where = f"{path.relative_to(ROOT)}:{line} imports {imported}"
            top = imported.split(".")[0]
            if top == "pixelmill":
                target = layer(imported.removeprefix("pixelmill."))
                if target not in ALLOWED[mine]:
                    found.append(f"{where}: {mine} may not import {target}")
            elif top == "prefect" or top == "prefect_dask":
                if mine not in PREFECT_LAYERS:
                    found.append(f"{where}: Prefect only in tasks/steps.py and flows/")
            elif top == "fsspec" and mine == "models":
                found.append(f"{where}: models/ is torch only")
    return found


def test_imports_go_one_way():
    assert violations() == []


@pytest.mark.parametrize(("source", "expected"), [
    ("from pixelmill.tasks.training.loop import x", "inference may not import training"),
    ("import prefect", "Prefect only in tasks/steps.py and flows/"),
    ("def f():\n    from pixelmill.flows.cli import app", "inference may not import flows"),
])
def test_the_check_catches_a_sideways_lazy_or_upward_import(tmp_path, monkeypatch, source, expected):
    """The contract is not vacuous: a module that breaks it, at any depth, is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text(source + "\n")
    monkeypatch.setattr(f"{__name__}.modules", lambda: {"tasks.inference.bad": bad})
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    [message] = violations()
    assert message.endswith(expected)


def test_every_module_is_in_a_layer():
    names = modules()
    assert len(names) > 40
    assert {layer(n) for n in names} == {"models", "core", *ROOMS, "steps", "flows"}
