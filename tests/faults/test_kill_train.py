"""`pixelmill train` killed with -9 right after its first checkpoint is stored (PIXELMILL_FAULT=train.checkpoint:1),
then rerun with `--resume`: the registered weights are bit-identical to an uninterrupted run's on the CPU, and the
killed run left no version in the registry. (Training holds no run lease, unlike ingest, crappify and apply: nothing
marks the killed flow run Crashed; the resume is what recovers.)"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from tests.faults.driver import files_under, record, run_cli, run_to_fault, temp_files
from tests.helpers import crappify_local, ingest_local, texture_png

pytestmark = pytest.mark.slow  # three `pixelmill train` runs of 12 tiny steps: 15-27 s on 2 shared cores

CONFIG = """arch: unet-plain
arch_kwargs: {base: 8, depth: 2}
batch_size: 4
crop: 16
val_crop: 24
loader_workers: 0
lr: 0.003
steps: 12
val_every: 5
"""


@pytest.fixture(scope="module")
def pairs_ws(tmp_path_factory) -> Path:
    """A workspace with a real x2 paired set `d-sr-x2` (ingest + crappify sr-x2, no Prefect)."""
    root = tmp_path_factory.mktemp("train")
    src, ws = root / "src", root / "ws"
    src.mkdir()
    for i in range(12):
        (src / f"t{i:02d}.png").write_bytes(texture_png(i))
    ingest_local(str(src), str(ws), split_fractions=(0.75, 0.25, 0.0))
    crappify_local(str(ws), recipe="sr-x2")
    return ws


def train_args(ws: Path, config: Path, *more: str) -> list[str]:
    return ["train", "restoration", "--pairs", "d-sr-x2", "--name", "sr", "--config", str(config),
            "--workspace", str(ws), *more]


def versions(ws: Path) -> list[str]:
    folder = ws / "models" / "sr"
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "checkpoints") if folder.exists() else []


def validated_steps(log: Path) -> list[int]:
    """The steps at which the run logged a validation (the train task's `step N  train_loss ...` lines)."""
    return [int(m) for m in re.findall(r" - step (\d+)  ", log.read_text(errors="replace"))]


def test_train_killed_after_its_first_checkpoint_resumes_to_the_same_weights(prefect, pairs_ws, tmp_path):
    import torch
    from safetensors.torch import load_file

    from pixelmill.tasks.training.loop import load_state

    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    base, ws = tmp_path / "base", tmp_path / "ws"
    shutil.copytree(pairs_ws, base)
    shutil.copytree(pairs_ws, ws)
    env = prefect.env(OMP_NUM_THREADS="1")  # one thread in every run: CPU kernels then sum in one order

    code, out = run_cli(train_args(base, config), env, tmp_path / "uninterrupted.log")
    assert code == 0, out[-3000:]
    assert versions(base) == ["v1"] and validated_steps(tmp_path / "uninterrupted.log") == [5, 10, 12]

    run_to_fault(train_args(ws, config), env, tmp_path / "killed.log", "train.checkpoint:1")
    assert validated_steps(tmp_path / "killed.log") == [5]
    # The point's promise: the step-5 checkpoint is stored whole, and nothing is registered.
    checkpoint = ws / "models" / "sr" / "checkpoints" / "last.pt"
    state = load_state(checkpoint.read_bytes())
    assert state["step"] == 5 and state["samples"] == 5 * 4
    assert versions(ws) == [], "a killed training run left a version in the registry"
    assert not (ws / "catalog" / "models").exists() or not files_under(ws / "catalog" / "models")
    assert temp_files(ws) == []

    code, out = run_cli(train_args(ws, config, "--resume"), env, tmp_path / "resumed.log")
    assert code == 0, out[-3000:]
    assert "trained sr:v1: 12 steps" in out, out[-3000:]
    # resumed, not restarted (a restart would give the same weights too): validations at 10 and 12 only
    assert validated_steps(tmp_path / "resumed.log") == [10, 12], out[-3000:]
    assert versions(ws) == ["v1"]
    weights = [p / "models" / "sr" / "v1" / "weights.safetensors" for p in (base, ws)]
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in weights]
    a, b = (load_file(str(p)) for p in weights)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == [], "weights differ after kill -9 and --resume"
    assert digests[0] == digests[1]  # and the files, byte for byte
    record("train kill -9", runs_killed=1, tensors_compared=len(a))
