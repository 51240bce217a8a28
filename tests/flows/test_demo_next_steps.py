"""After `make demo`, the commands it prints work as printed, from another folder: the first one points the CLI
at the demo's workspace (the CLI's default is ./pixelmill-workspace)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pixelmill.flows.demo import next_steps
from pixelmill.models.factory import build_model
from pixelmill.tasks.core import registry
from tests.flows.test_cli_imports import prefect_env
from tests.helpers import crappify_local, ingest_local, make_image


@pytest.mark.slow  # measured 10 s on 2 shared, loaded cores
def test_the_printed_next_steps_run_as_printed(tmp_path):
    photos, ws = tmp_path / "bucket", tmp_path / "demo" / "workspace"
    photos.mkdir()
    for seed in range(3):
        make_image(64, 48, seed=seed).save(photos / f"p{seed}.png")
    ingest_local(str(photos), str(ws), "samples")
    crappify_local(str(ws), "samples", recipe="lesson7")
    net = build_model({"arch": "unet-plain", "scale": 1, "base": 8, "depth": 2, "residual": True})
    mv = registry.save(str(ws), "demo-sr-x2", net, config={"task": "restoration", "scale": 1, "in_channels": 3},
                       metadata={"steps": 10, "pairs_set": "samples-lesson7"})  # what a trained one has
    registry.set_alias(str(ws), mv, "production")
    report = {"workspace": str(ws), "pairs": {"set_name": "samples-lesson7"}, "trained": {"model": mv.ref},
              "segmentation": None}

    export, *commands = next_steps(report)
    assert export == f"export PIXELMILL_WORKSPACE={ws}"
    name, value = export.removeprefix("export ").split("=", 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = prefect_env(tmp_path / "prefect") | {name: value}
    bin_dir = str(Path(sys.executable).parent)
    for command in commands:
        args = shlex.split(command.replace("IMAGE", str(photos / "p0.png")).replace("OUT.png", "out.png"))
        proc = subprocess.run(args, cwd=elsewhere, env=env | {"PATH": bin_dir + os.pathsep + env["PATH"]},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}{proc.stderr}"
    assert (elsewhere / "out.png").exists()
    assert not (elsewhere / "pixelmill-workspace").exists()
