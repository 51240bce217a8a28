"""The wheel installs one import package, `pixelmill`, with flows, tasks and models inside it and nothing else at
the top level of site-packages (a top-level `models` or `tasks` would collide with users' own packages).

The editable install used for development hides packaging mistakes: it maps names to the repository's folders.
So this builds the real wheel and installs it in a fresh virtual environment.
"""

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a venv, a wheel build and an install: ~15 s

REPO = Path(__file__).resolve().parents[1]
DEV_SITE = sysconfig.get_paths()["purelib"]


def run(*cmd, **kwargs) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def in_python(python: Path, code: str, cwd: Path) -> dict:
    """Run `code` isolated (no PYTHON* variables, no user site, no cwd on sys.path); it prints one JSON line."""
    return json.loads(run(python, "-I", "-c", code, cwd=cwd).strip().splitlines()[-1])


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packaging")
    # Build from a copy: setuptools writes build/ and *.egg-info into the source folder (others work in this
    # tree), and a stale build/lib there would slip deleted modules into the wheel.
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
        "pixelmill-demo", "pixelmill-workspace"))
    # no build isolation: the package index is offline, and the dev venv has setuptools already
    run(sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "--no-index",
        "-w", tmp / "dist")
    (wheel,) = (tmp / "dist").glob("pixelmill-*.whl")

    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    empty = tmp / "cwd"
    empty.mkdir()
    site = Path(in_python(python, "import json, sysconfig; print(json.dumps(sysconfig.get_paths()['purelib']))",
                          empty))
    before = {p.name for p in site.iterdir()}
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel)
    return {"venv": venv, "python": python, "site": site, "before": before, "cwd": empty}


def test_site_packages_gains_only_pixelmill(installed):
    site = installed["site"]
    gained = {p.name for p in site.iterdir()} - installed["before"]
    assert {name for name in gained if not name.endswith(".dist-info")} == {"pixelmill"}
    assert {p.name for p in (site / "pixelmill").iterdir()} >= {"flows", "tasks", "models"}
    for top in ("flows", "tasks", "models"):
        assert not (site / top).exists()


def test_every_module_of_the_source_tree_is_installed(installed):
    # `packages` in pyproject.toml is an explicit list: a new room (tasks/something/) must be added there too
    missing = [str(py.relative_to(REPO)) for folder in ("flows", "tasks", "models")
               for py in (REPO / folder).rglob("*.py")
               if "__pycache__" not in py.parts
               and not (installed["site"] / "pixelmill" / py.relative_to(REPO)).is_file()]
    assert missing == []


def test_console_script_targets_the_cli(installed):
    code = """import json, importlib.metadata as md
dist = md.distribution("pixelmill")
eps = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
print(json.dumps({"eps": eps, "at": str(dist.locate_file(""))}))"""
    found = in_python(installed["python"], code, installed["cwd"])
    assert found["eps"] == {"pixelmill": "pixelmill.flows.cli:main"}
    assert Path(found["at"]) == installed["site"]
    assert (installed["venv"] / "bin" / "pixelmill").is_file()


def test_cli_imports_from_the_wheel(installed):
    # The fresh venv has no dependencies: the dev venv's site-packages goes after its own on sys.path, so that
    # typer, pydantic... come from there while pixelmill can only come from the wheel. Appended to sys.path,
    # that folder's .pth files are not run, so the dev venv's editable finder (which maps pixelmill to this
    # repository) stays inactive; the assertions below check exactly that.
    code = f"""import json, sys
sys.path.append({DEV_SITE!r})
import pixelmill, pixelmill.flows.cli, typer
print(json.dumps({{"cli": pixelmill.flows.cli.__file__, "pixelmill": list(pixelmill.__path__),
                  "main": callable(pixelmill.flows.cli.main), "typer": typer.__file__,
                  "editable_finder": any("editable" in m for m in sys.modules), "path": sys.path}}))"""
    found = in_python(installed["python"], code, installed["cwd"])
    site = installed["site"]
    assert Path(found["cli"]) == site / "pixelmill" / "flows" / "cli" / "__init__.py"
    assert found["pixelmill"] == [str(site / "pixelmill")]
    assert found["main"] and not found["editable_finder"]
    assert Path(found["typer"]).is_relative_to(DEV_SITE)
    assert found["path"].index(str(site)) < found["path"].index(DEV_SITE)
    assert not any(Path(p).resolve() == REPO for p in found["path"] if p)
