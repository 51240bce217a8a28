"""`pixelmill server` starts a real `prefect server start` in the background; flow commands then use it instead of
an embedded server (one line says so), and a failed flow still prints only `error:` and `hint:` while the run's
logs on the server keep the traceback. Wall times are printed (`pytest -s`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pixelmill.flows.console import server_is_up
from tests.flows.test_cli_imports import prefect_env
from tests.helpers import make_image, unexpected_stderr

PIXELMILL = str(Path(sys.executable).parent / "pixelmill")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(environment for the CLI, API URL) with a Prefect server started by `pixelmill server` on a free port."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(root / "prefect") | {"PIXELMILL_LOCAL_PREFECT_URL": url}
    start = time.perf_counter()
    proc = subprocess.run([PIXELMILL, "server", "--port", str(port)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    print(f"\npixelmill server: {time.perf_counter() - start:.1f} s until it answered")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"Prefect server running at {url}; UI http://127.0.0.1:{port} (log: ")
    assert lines[1] == f"for pixelmill commands to find it: export PIXELMILL_LOCAL_PREFECT_URL={url}"
    assert lines[2].startswith("stop it: kill ")
    pid = int(lines[2].rsplit(" ", 1)[1])
    try:
        yield env, url, root
    finally:
        os.kill(pid, signal.SIGTERM)  # what the command tells the user to do
        deadline = time.monotonic() + 60
        while server_is_up(url) and time.monotonic() < deadline:
            time.sleep(0.5)
        stopped = not server_is_up(url)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # whatever is left of its session, so no test leaves a server behind
        assert stopped, "`kill PID` did not stop the server"


def run(args: list[str], env: dict, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([PIXELMILL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.perf_counter() - start


@pytest.mark.slow  # a Prefect server start: 15-40 s on two shared cores
def test_flow_commands_use_the_running_server_and_stay_quiet(server):
    env, url, root = server
    folder = root / "photos"
    folder.mkdir()
    for seed in range(3):
        make_image(64 + 8 * seed, 48, seed=seed).save(folder / f"p{seed}.png")
    ws = str(root / "ws")

    again, _ = run(["server", "--port", url.rsplit(":", 1)[1].split("/")[0]], env, root)
    assert again.returncode == 0 and again.stdout.startswith(f"a Prefect server already answers at {url}")

    ingested, seconds = run(["ingest", str(folder), "--dataset", "d", "--workspace", ws], env, root)
    print(f"pixelmill ingest of 3 files with a local server: {seconds:.2f} s wall")
    assert ingested.returncode == 0, ingested.stdout + ingested.stderr
    assert ingested.stdout.splitlines()[0] == f"prefect: local server {url} (UI {url.removesuffix('/api')})"
    assert unexpected_stderr(ingested.stderr) == [], ingested.stderr  # no banner, no INFO lines
    assert "d: 3 files in the catalog, 3 ok, 0 errors" in ingested.stdout

    made, seconds = run(["crappify", "--dataset", "d", "--workspace", ws], env, root)
    print(f"pixelmill crappify of 3 images with a local server: {seconds:.2f} s wall")
    assert made.returncode == 0 and unexpected_stderr(made.stderr) == [], made.stdout + made.stderr
    assert made.stdout.splitlines()[-1] == (f"next: pixelmill train restoration --pairs d-lesson7 --name d-lesson7-model"
                                            f" --max-minutes 10 --workspace {ws}")

    # a mistake only the flow can find: the set exists, made with another recipe
    failed, seconds = run(["crappify", "--dataset", "d", "--recipe", "sr-x2", "--name", "d-lesson7",
                           "--workspace", ws], env, root)
    print(f"pixelmill crappify failing inside the flow: {seconds:.2f} s wall")
    assert failed.returncode == 1
    err = unexpected_stderr(failed.stderr)
    assert len(err) == 2, failed.stderr
    assert err[0].startswith("error: paired set 'd-lesson7' was made with another recipe definition (")
    assert err[1] == "hint: pass a new --name, or delete the set's folder and catalog part to remake it"

    # the traceback is still in the run's logs on the server
    request = urllib.request.Request(f"{url}/logs/filter", data=json.dumps({"limit": 200, "sort": "TIMESTAMP_DESC"})
                                     .encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        messages = [log["message"] for log in json.load(answer)]
    assert any("Traceback" in m and "was made with another recipe definition" in m for m in messages)
