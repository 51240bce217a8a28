"""Hostile input through the real CLI: a zip whose member names point outside, are absolute, long, or hold a newline,
and recipes that ask for absurd sizes, a million steps, 2,000 levels of nesting or infinite factors. Each case
counts rows and files, or checks the exit code and the first lines of the error."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest

from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.names import HASH_CHARS, STEM_MAX_BYTES, unsafe_reason
from tests.faults.driver import Cli, audit_pairs, files_under, local, record, run_cli
from tests.helpers import make_image

pytestmark = pytest.mark.slow  # 25-50 s for the three on 2 busy cores

# member -> the readable part of its output names (a long one is cut to leave room for the hash and extension)
SAFE = {"ok.png": "ok", "sub/deep.png": "deep", "L" * 246 + ".png": "L" * (STEM_MAX_BYTES - HASH_CHARS - 1),
        "日本の写真.png": "日本の写真", "naïve café.png": "naïve café"}
UNSAFE = {"../../evil.png": "'..' component", "/abs/evil.png": "absolute path", "a/../../b.png": "'..' component",
          "new\nline.png": "control character U+000A"}


def png(seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    make_image(w=120 + seed, h=100, seed=seed).save(buf, "PNG")
    return buf.getvalue()


def test_hostile_zip_members(prefect, tmp_path):
    assert len("L" * 246 + ".png") == 250
    archive, ws = tmp_path / "hostile.zip", tmp_path / "ws"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, name in enumerate([*SAFE, *UNSAFE]):
            zf.writestr(name, png(i))
    before = set(files_under(tmp_path.parent))

    code, out = run_cli(["ingest", str(archive), "--dataset", "hostile", "--workspace", str(ws)], prefect.env(),
                        tmp_path / "ingest.log")
    assert code == 0, out[-3000:]
    rows = {r["uri"].split("::")[0].removeprefix("zip://"): r for r in
            Catalog(str(ws)).read("images", "hostile").to_pylist()}
    assert len(rows) == len(SAFE) + len(UNSAFE) == 9  # one row per member: none vanished, none merged
    assert {name: r["error"] for name, r in rows.items() if r["status"] == "error"} == \
        {name: f"unsafe_name: {reason}" for name, reason in UNSAFE.items()}
    assert all(rows[name]["sha256"] is None for name in UNSAFE)  # never read

    code, out = run_cli(["crappify", "--dataset", "hostile", "--recipe", "sr-x2", "--workspace", str(ws)],
                        prefect.env(), tmp_path / "crappify.log")
    assert code == 0, out[-3000:]
    counts = audit_pairs(ws, "hostile-sr-x2", len(SAFE))
    assert counts.pop("rows_checked") == len(SAFE)
    assert set(counts.values()) == {0}, counts
    names = [p.name for p in files_under(local(ws) / "datasets" / "hostile-sr-x2")]
    assert len(names) == len(SAFE)  # an LR file each: sr-x2's HR is the member itself (hr_kind source)
    for name in names:
        assert unsafe_reason(name) is None and len(name.encode()) <= 255, name
    assert {name.rsplit("-", 1)[0] for name in names} == set(SAFE.values())  # readable names kept, long ones cut

    # Anything an unsafe member could have become, written outside the workspace. By name, not "every new file":
    # the session's Prefect and S3 servers keep writing their own files beside this test's folder.
    written = set(files_under(tmp_path.parent)) - before
    outside = [p for p in written if not (str(p).startswith(f"{ws}/") or p.parent == tmp_path)]
    escaped = [p for p in outside if p.name.split(".")[0].split("-")[0] in {"evil", "b", "new\nline", "line"}]
    assert escaped == [], escaped
    assert not any(os.path.exists(p) for p in ("/abs/evil.png", tmp_path.parent / "evil.png", tmp_path / "b.png"))
    record("hostile zip", rows_checked=len(rows), unsafe_rows=len(UNSAFE), pairs=len(SAFE), files_outside=0)


DEEP = 2000
HOSTILE_RECIPES = {
    # name: (YAML text, what the error says after the file's name: the field and what is wrong)
    "huge-short-side": ("steps:\n  - {op: downscale, short_side: 1000000}\n",
                        "steps.0.short_side: Input should be less than or equal to 10000"),
    "million-steps": ("steps:\n" + "  - {op: grayscale}\n" * 10**6,
                      "steps: a recipe has at most 64 steps, nested ones included"),
    "deep-chain": ("steps:\n  - " + "{op: chain, steps: [" * DEEP + "{op: grayscale}" + "]}" * DEEP + "\n",
                   "steps.0" + ".steps.0" * 9 + ": chain and one_of nest at most 8 deep"),
    "huge-factor": ("steps:\n  - {op: downscale, factor: 1e300}\n",
                    "steps.0.factor: Input should be less than or equal to 64"),
    "infinite-factor": ("steps:\n  - {op: downscale, factor: .inf}\n", "steps.0.factor: Input should be a finite number"),
}


@pytest.fixture(scope="module")
def small_set(prefect, tmp_path_factory):
    """Four ingested photos, 120-150 px wide."""
    root = tmp_path_factory.mktemp("small")
    (root / "src").mkdir()
    for i in range(4):
        make_image(w=120 + 10 * i, h=96, seed=i).save(root / "src" / f"img{i}.png")
    code, out = run_cli(["ingest", str(root / "src"), "--dataset", "d", "--workspace", str(root / "ws")],
                        prefect.env(), root / "ingest.log")
    assert code == 0, out[-3000:]
    return root / "ws"


def test_hostile_recipes_fail_before_any_work_naming_the_field(prefect, small_set, tmp_path):
    # All at once: each is a few seconds of interpreter start-up on 2 cores, and they share nothing.
    clis = {}
    for name, (text, _) in HOSTILE_RECIPES.items():
        (tmp_path / f"{name}.yaml").write_text(text)
        args = ["crappify", "--dataset", "d", "--recipe", str(tmp_path / f"{name}.yaml"), "--workspace", str(small_set)]
        clis[name] = Cli(args, prefect.env(), tmp_path / f"{name}.log")
    for name, cli in clis.items():
        code, out = cli.wait(timeout=300)
        assert code == 1, (name, out[-2000:])
        error = next(line for line in out.splitlines() if line.startswith("error: "))  # the first
        assert error == f"error: {tmp_path / name}.yaml: invalid recipe: {HOSTILE_RECIPES[name][1]}", name
    assert not (local(small_set) / "datasets").exists()  # nothing made, not even a folder
    assert Catalog(str(small_set)).read("pairs").num_rows == 0
    record("hostile recipes", recipes_refused=len(clis), pairs_made=0)


def test_a_downscale_to_a_larger_short_side_never_enlarges(prefect, small_set, tmp_path):
    recipe = tmp_path / "upscale.yaml"
    recipe.write_text("steps:\n  - {op: downscale, short_side: 3000}\n")
    ws = tmp_path / "ws"
    shutil.copytree(small_set / "catalog", ws / "catalog")
    code, out = run_cli(["crappify", "--dataset", "d", "--recipe", str(recipe), "--workspace", str(ws)],
                        prefect.env(), tmp_path / "crappify.log")
    assert code == 0, out[-3000:]
    rows = Catalog(str(ws)).read("pairs", "d-upscale").to_pylist()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert all((r["lr_width"], r["lr_height"]) == (r["hr_width"], r["hr_height"]) for r in rows)  # 96 px, not 3000
    assert max(Path(local(r["lr_uri"])).stat().st_size for r in rows) < 100_000
    record("hostile recipes", rows_checked=len(rows), enlarged=0)
